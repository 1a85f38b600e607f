// Internal: call checks that name the call with file:line.
#pragma once

#include <string>

#include "distmla/dist/error.h"
#include "distmla/distmla.hpp"

#define DMLA_DIST_WHERE (std::string(__FILE__) + ":" + std::to_string(__LINE__))

// Returns dmlaErrorCuda from the enclosing function if a CUDA runtime call fails.
#define DMLA_DIST_CUDA_RET(call)                                                             \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess)                                                                    \
      return ::distmla::dist::set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": " #call ": " +    \
                                                           cudaGetErrorString(e_));           \
  } while (0)

// Throws distmla::Error if a CUDA runtime call fails.
#define DMLA_DIST_CUDA_THROW(call)                                                           \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess)                                                                    \
      ::distmla::dist::throw_if_error(::distmla::dist::set_error(                             \
          dmlaErrorCuda, DMLA_DIST_WHERE + ": " #call ": " + cudaGetErrorString(e_)));        \
  } while (0)

#define DMLA_DIST_FAIL(code, msg)                                  \
  do {                                                             \
    const std::string m_ = (msg);                                  \
    ::distmla::dist::set_error((code), m_);                        \
    throw ::distmla::Error((code), m_);                            \
  } while (0)
