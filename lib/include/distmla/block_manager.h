// Host-side paged-KV block manager: a pool of blocks, per-sequence page lists, and block tables
// written for the kernels. Every mutating call is all-or-nothing: on error nothing changed.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "distmla/distmla.h"

namespace distmla {

class BlockManager {
 public:
  BlockManager(int num_blocks, int page_size);  // throws std::invalid_argument on bad sizes

  int num_blocks() const { return num_blocks_; }
  int page_size() const { return page_size_; }
  int num_free_blocks() const { return static_cast<int>(free_.size()); }
  bool contains(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  // Blocks needed to grow seq_id (or a new sequence when absent) by new_tokens.
  int blocks_needed(int64_t seq_id, int new_tokens) const;

  dmlaResult_t add_sequence(int64_t seq_id, int num_tokens);   // error if it exists
  dmlaResult_t extend(int64_t seq_id, int new_tokens);
  // All sequences grow or none does (one decode step's append).
  dmlaResult_t extend_batch(const std::vector<int64_t>& seq_ids, const std::vector<int>& new_tokens);
  dmlaResult_t free_sequence(int64_t seq_id);

  int seqlen(int64_t seq_id) const;                         // -1 if unknown
  const std::vector<int32_t>* pages(int64_t seq_id) const;  // null if unknown
  // (physical block, offset inside it) of token `pos` of seq_id; false if out of range.
  bool locate(int64_t seq_id, int pos, int32_t* block, int* offset) const;

  // Writes rows of a block table [seq_ids.size(), max_blocks_per_seq] (unused entries -1) and
  // seqlens in the order of seq_ids. Fails (writing nothing) if a sequence is unknown or needs
  // more pages than max_blocks_per_seq.
  dmlaResult_t write_block_table(const std::vector<int64_t>& seq_ids, int max_blocks_per_seq,
                                 int32_t* block_table, int32_t* seqlens) const;

 private:
  struct Seq {
    int len = 0;
    std::vector<int32_t> pages;
  };
  int num_blocks_;
  int page_size_;
  std::vector<int32_t> free_;  // LIFO free list
  std::unordered_map<int64_t, Seq> seqs_;
};

}  // namespace distmla
