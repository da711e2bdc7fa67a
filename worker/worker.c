/* worker.c - worker node runtime (filled in below). */
#include "tally/core.h"
int tally_worker_placeholder(void);
int tally_worker_placeholder(void) { return 0; }
