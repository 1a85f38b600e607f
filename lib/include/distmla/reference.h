// CPU reference backend: the exact math of DESIGN.md section 1, accumulated in double,
// threaded over (sequence, head).
#pragma once

#include <vector>

#include "distmla/distmla.h"

namespace distmla {

// Host tensors laid out as in distmla.h (q and kv as 16-bit bits of shape.q_dtype/kv_dtype).
// Fills out_ref [batch, s_q, h_q, 512] and lse_ref [batch, h_q, s_q] in double.
// Reads only the pages each row may see (unused pages may hold NaN). Does not validate:
// call dmlaPlanCreate/validate first. num_threads 0 = hardware concurrency.
void reference_decode(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& host,
                      std::vector<double>* out_ref, std::vector<double>* lse_ref,
                      int num_threads = 0);

// Resolved softmax scale (shape.scale, or 1/sqrt(576) when it is 0).
double resolved_scale(const dmlaDecodeShape_t& shape);

}  // namespace distmla
