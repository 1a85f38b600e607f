// distmla_decode: the main job. Single device, or (with the distributed layer built) the
// mpirun / TCP-store launcher.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "job_options.h"

int main(int argc, char** argv) {
  using namespace distmla::examples;
  JobOptions opt;
  bool help = false;
  std::string err;
  if (!parse_job_options(argc, argv, &opt, &help, &err)) {
    std::fprintf(stderr, "%s: %s\n", argv[0], err.c_str());
#ifdef DISTMLA_HAVE_DIST
    if (JobOptions launch; store_launch_of(argc, argv, &launch)) abort_store_launch(launch, err);
#endif
    return 2;
  }
  if (help) {
    print_job_usage(argv[0]);
    return 0;
  }
  // mpirun sets OMPI_COMM_WORLD_SIZE in every process it starts.
  const char* ompi = std::getenv("OMPI_COMM_WORLD_SIZE");
  const bool under_mpirun = ompi && std::atoi(ompi) > 1;
  const bool distributed = opt.tp * opt.cp > 1 || opt.world > 1 || under_mpirun;
  if (distributed) {
#ifdef DISTMLA_HAVE_DIST
    return run_distributed_job(opt);
#else
    std::fprintf(stderr,
                 "%s: this build has no distributed layer (configured with "
                 "DISTMLA_BUILD_DISTRIBUTED=OFF), which -t %d -x %d%s%s needs\n",
                 argv[0], opt.tp, opt.cp,
                 opt.world > 1 ? (" --world " + std::to_string(opt.world)).c_str() : "",
                 under_mpirun ? " under mpirun" : "");
    return 2;
#endif
  }
  return run_single_device_job(opt);
}
