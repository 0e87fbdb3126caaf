// Processes and the shell, the one way the framework starts a child or quotes a word for a shell
// (trial workers, data-parallel ranks, Slurm scripts, the git revision of a results file).
#pragma once

#include <string>
#include <vector>

#include <sys/types.h>

namespace mhd {

// `s` as one shell word: unchanged when it needs no quoting, else in single quotes.
std::string shell_word(const std::string& s);

// The standard output of `/bin/sh -c command`, trailing newlines removed; "" when it fails.
std::string run_command(const std::string& command);

struct ChildProcess {
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;  // the child's stdout and stderr when captured, else -1
};

// fork + exec at once (the child runs nothing of this process, so no LibTorch thread pool is used
// after fork). The child dies with its parent (PR_SET_PDEATHSIG), so a runner killed with SIGKILL
// leaves no orphan behind. `capture_output`: the child's stdout and stderr come back as pipes.
// Throws mhd::Error when the process cannot be started.
ChildProcess spawn_process(const std::string& exe, const std::vector<std::string>& args, bool capture_output);

}  // namespace mhd
