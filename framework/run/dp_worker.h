// The hidden `dp-worker` subcommand, for any executable that calls train_trial (mhd, tests):
//   PROG dp-worker --config-json FILE --rank R --world K --rendezvous SPEC [--threads N] [--plugin SO]...
//   PROG dp-worker --study FILE      (external launch: every world_size > 1 trial, rank from $RANK)
// Returns the exit code (0: trained; 1: failed; 2: bad arguments), or -1 when argv[1] is not
// "dp-worker" (so main can go on).
#pragma once

namespace mhd {

int data_parallel_worker_main(int argc, char** argv);

}  // namespace mhd
