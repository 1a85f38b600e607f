// Result-code strings and the per-thread last error message.
#include <string>

#include "internal.h"

namespace distmla::detail {
namespace {
thread_local std::string g_last_error;
}

dmlaResult_t set_error(dmlaResult_t code, const std::string& msg) {
  if (code == dmlaSuccess) {
    g_last_error.clear();
  } else {
    g_last_error = msg;
  }
  return code;
}

const char* last_error_message() { return g_last_error.c_str(); }

}  // namespace distmla::detail

extern "C" const char* dmlaGetErrorString(dmlaResult_t result) {
  switch (result) {
    case dmlaSuccess: return "success";
    case dmlaErrorNullPointer: return "a required pointer is null";
    case dmlaErrorBatch: return "batch is negative";
    case dmlaErrorHeads: return "h_q is outside 1..128";
    case dmlaErrorQueryLength: return "s_q is outside 1..4";
    case dmlaErrorPageSize: return "page_size is not 16, 32, 64 or 128";
    case dmlaErrorDtype: return "unsupported or mismatched dtype";
    case dmlaErrorShape: return "invalid shape (num_blocks or max_blocks_per_seq)";
    case dmlaErrorNegativeValue: return "a seqlen or block id is negative";
    case dmlaErrorBlockOutOfRange: return "a block id is outside the KV pool";
    case dmlaErrorSeqlenOutOfRange: return "a seqlen needs more pages than the block table holds";
    case dmlaErrorScale: return "scale is not finite or is negative";
    case dmlaErrorWorkspace: return "workspace too small or misaligned";
    case dmlaErrorBackend: return "backend not available";
    case dmlaErrorCuda: return "a CUDA runtime call failed";
    case dmlaErrorOutOfBlocks: return "not enough free KV blocks";
    case dmlaErrorNotFound: return "unknown sequence id";
    case dmlaErrorComm: return "communicator or bootstrap failure";
    case dmlaErrorTimeout: return "a deadline passed";
    case dmlaErrorInternal: return "internal error";
    case dmlaErrorInvalidArgument: return "invalid argument";
  }
  return "unknown result code";
}

extern "C" const char* dmlaGetLastErrorMessage(void) { return distmla::detail::last_error_message(); }
