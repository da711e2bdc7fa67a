/* coordinator.c - coordinator node runtime (filled in below). */
#include "tally/core.h"
int tally_coordinator_placeholder(void);
int tally_coordinator_placeholder(void) { return 0; }
