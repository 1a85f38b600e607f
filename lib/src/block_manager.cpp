// Paged-KV block manager. Every mutating call checks everything first and only then changes
// state, so a failure leaves the manager exactly as it was.
#include "distmla/block_manager.h"

#include <climits>
#include <stdexcept>
#include <string>

#include "internal.h"

namespace distmla {

using detail::set_error;

namespace {
int64_t pages_for(int64_t tokens, int page_size) { return (tokens + page_size - 1) / page_size; }
std::string id_str(int64_t id) { return std::to_string(id); }
}  // namespace

BlockManager::BlockManager(int num_blocks, int page_size) : num_blocks_(num_blocks), page_size_(page_size) {
  if (num_blocks < 1) {
    throw std::invalid_argument("BlockManager: num_blocks = " + std::to_string(num_blocks) + " is below 1");
  }
  if (page_size < 1) {
    throw std::invalid_argument("BlockManager: page_size = " + std::to_string(page_size) + " is below 1");
  }
  free_.reserve(static_cast<size_t>(num_blocks));
  // LIFO: block 0 is handed out first.
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int BlockManager::blocks_needed(int64_t seq_id, int new_tokens) const {
  auto it = seqs_.find(seq_id);
  const int64_t len = it == seqs_.end() ? 0 : it->second.len;
  const int64_t have = it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.pages.size());
  const int64_t add = new_tokens > 0 ? new_tokens : 0;
  const int64_t need = pages_for(len + add, page_size_) - have;
  return static_cast<int>(need > INT_MAX ? INT_MAX : need);
}

dmlaResult_t BlockManager::add_sequence(int64_t seq_id, int num_tokens) {
  if (seqs_.count(seq_id)) {
    return set_error(dmlaErrorInvalidArgument, "seq_id = " + id_str(seq_id) + " already exists");
  }
  if (num_tokens < 0) {
    return set_error(dmlaErrorNegativeValue, "num_tokens = " + std::to_string(num_tokens) + " is negative");
  }
  const int need = blocks_needed(seq_id, num_tokens);
  if (need > num_free_blocks()) {
    return set_error(dmlaErrorOutOfBlocks, "add_sequence(seq_id = " + id_str(seq_id) + ", num_tokens = " +
                                               std::to_string(num_tokens) + ") needs " + std::to_string(need) +
                                               " blocks, " + std::to_string(num_free_blocks()) + " free");
  }
  Seq s;
  s.len = num_tokens;
  for (int k = 0; k < need; ++k) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
  seqs_.emplace(seq_id, std::move(s));
  return set_error(dmlaSuccess, "");
}

dmlaResult_t BlockManager::extend(int64_t seq_id, int new_tokens) {
  return extend_batch({seq_id}, {new_tokens});
}

dmlaResult_t BlockManager::extend_batch(const std::vector<int64_t>& seq_ids,
                                        const std::vector<int>& new_tokens) {
  if (seq_ids.size() != new_tokens.size()) {
    return set_error(dmlaErrorInvalidArgument, "new_tokens has " + std::to_string(new_tokens.size()) +
                                                   " entries, seq_ids has " + std::to_string(seq_ids.size()));
  }
  // Pass 1: check everything and total the growth per sequence (a repeated id grows twice).
  std::unordered_map<int64_t, int64_t> growth;
  for (size_t k = 0; k < seq_ids.size(); ++k) {
    if (new_tokens[k] < 0) {
      return set_error(dmlaErrorNegativeValue, "new_tokens[" + std::to_string(k) + "] = " +
                                                   std::to_string(new_tokens[k]) + " is negative");
    }
    if (!seqs_.count(seq_ids[k])) {
      return set_error(dmlaErrorNotFound, "seq_ids[" + std::to_string(k) + "] = " + id_str(seq_ids[k]) +
                                              " is not a known sequence");
    }
    growth[seq_ids[k]] += new_tokens[k];
  }
  int64_t need = 0;
  for (const auto& g : growth) {
    const Seq& s = seqs_.at(g.first);
    const int64_t len = s.len + g.second;
    if (len > INT_MAX) {
      return set_error(dmlaErrorInvalidArgument, "seq_id = " + id_str(g.first) + " would grow to " +
                                                     std::to_string(len) + " tokens (more than 2^31 - 1)");
    }
    need += pages_for(len, page_size_) - static_cast<int64_t>(s.pages.size());
  }
  if (need > num_free_blocks()) {
    return set_error(dmlaErrorOutOfBlocks, "extending " + std::to_string(growth.size()) + " sequences needs " +
                                               std::to_string(need) + " blocks, " +
                                               std::to_string(num_free_blocks()) + " free");
  }
  // Pass 2: nothing can fail any more.
  for (const auto& g : growth) {
    Seq& s = seqs_.at(g.first);
    s.len += static_cast<int>(g.second);
    const int64_t want = pages_for(s.len, page_size_);
    while (static_cast<int64_t>(s.pages.size()) < want) {
      s.pages.push_back(free_.back());
      free_.pop_back();
    }
  }
  return set_error(dmlaSuccess, "");
}

dmlaResult_t BlockManager::free_sequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    return set_error(dmlaErrorNotFound, "seq_id = " + id_str(seq_id) + " is not a known sequence");
  }
  for (auto p = it->second.pages.rbegin(); p != it->second.pages.rend(); ++p) free_.push_back(*p);
  seqs_.erase(it);
  return set_error(dmlaSuccess, "");
}

int BlockManager::seqlen(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? -1 : it->second.len;
}

const std::vector<int32_t>* BlockManager::pages(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? nullptr : &it->second.pages;
}

bool BlockManager::locate(int64_t seq_id, int pos, int32_t* block, int* offset) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || pos < 0 || pos >= it->second.len) return false;
  if (block) *block = it->second.pages[static_cast<size_t>(pos / page_size_)];
  if (offset) *offset = pos % page_size_;
  return true;
}

dmlaResult_t BlockManager::write_block_table(const std::vector<int64_t>& seq_ids, int max_blocks_per_seq,
                                             int32_t* block_table, int32_t* seqlens) const {
  if (max_blocks_per_seq < 1) {
    return set_error(dmlaErrorShape, "max_blocks_per_seq = " + std::to_string(max_blocks_per_seq) +
                                         " is below 1");
  }
  if (!seq_ids.empty() && (!block_table || !seqlens)) {
    return set_error(dmlaErrorNullPointer, std::string(block_table ? "seqlens" : "block_table") + " is null");
  }
  for (size_t k = 0; k < seq_ids.size(); ++k) {
    auto it = seqs_.find(seq_ids[k]);
    if (it == seqs_.end()) {
      return set_error(dmlaErrorNotFound, "seq_ids[" + std::to_string(k) + "] = " + id_str(seq_ids[k]) +
                                              " is not a known sequence");
    }
    if (static_cast<int64_t>(it->second.pages.size()) > max_blocks_per_seq) {
      return set_error(dmlaErrorSeqlenOutOfRange,
                       "seq_id = " + id_str(seq_ids[k]) + " (" + std::to_string(it->second.len) +
                           " tokens) needs " + std::to_string(it->second.pages.size()) +
                           " pages but max_blocks_per_seq = " + std::to_string(max_blocks_per_seq));
    }
  }
  for (size_t k = 0; k < seq_ids.size(); ++k) {
    const Seq& s = seqs_.at(seq_ids[k]);
    int32_t* row = block_table + k * static_cast<size_t>(max_blocks_per_seq);
    for (int j = 0; j < max_blocks_per_seq; ++j) {
      row[j] = j < static_cast<int>(s.pages.size()) ? s.pages[static_cast<size_t>(j)] : -1;
    }
    seqlens[k] = s.len;
  }
  return set_error(dmlaSuccess, "");
}

}  // namespace distmla
