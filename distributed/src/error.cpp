#include "distmla/dist/error.h"

#include "distmla/distmla.hpp"

namespace distmla::dist {

namespace {
thread_local std::string g_message;
}

const char* last_error_message() { return g_message.c_str(); }

dmlaResult_t set_error(dmlaResult_t code, const std::string& message) {
  g_message = message;
  return code;
}

void throw_if_error(dmlaResult_t code) {
  if (code != dmlaSuccess) throw Error(code, g_message);
}

}  // namespace distmla::dist
