// Errors of the distributed layer: a dmlaResult_t plus a thread-local message that names the
// argument (or the call, with file:line) and the value. Factories and constructors throw
// distmla::Error carrying the same code and message instead.
#pragma once

#include <string>

#include "distmla/distmla.h"

namespace distmla::dist {

// Message of the last failure of a distributed call on this thread ("" if none).
const char* last_error_message();

// Records the message and returns code (internal helper, public so that examples can reuse it).
dmlaResult_t set_error(dmlaResult_t code, const std::string& message);

// Throws distmla::Error(code, last_error_message()) when code != dmlaSuccess.
void throw_if_error(dmlaResult_t code);

}  // namespace distmla::dist
