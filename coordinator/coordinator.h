/*
 * coordinator.h - the control plane: the authoritative catalog, membership and failure
 * detection, placement, DDL, and publishing the cluster map.
 */
#ifndef TALLY_COORDINATOR_H
#define TALLY_COORDINATOR_H

#include "tally/node.h"

typedef struct tally_coord tally_coord;
int tally_coord_start(tally_coord **out, const tally_node_config *cfg);
void tally_coord_stop(tally_coord *c);

#endif
