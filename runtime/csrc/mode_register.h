// The mode register: which (path, FiLM vector) an inference uses, switched from a control thread
// while other threads infer. Every inference must run wholly in one mode, and a FiLM vector
// computed for an off-grid λ must not be overwritten while an inference still reads it.
//
// Design: a fixed ring of record slots, each with a FiLM buffer (for off-grid λ) and a pin count.
//  - Writers (set_mode; serialised by a mutex) fill a slot that is neither published nor pinned,
//    then publish it with one atomic store of (generation << 16 | slot).
//  - Readers (infer) load the published word, pin that slot, and re-load the word: if it is
//    unchanged the slot is published and pinned, so no writer can touch it until release();
//    otherwise they unpin and retry. The record is read only after that check succeeds.
// With sequentially consistent atomics a writer that sees pin == 0 on a slot that is not
// published can only race with readers whose re-check will fail. Readers never block and never
// allocate; writers allocate nothing (all buffers are sized at construction).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "film.h"

namespace oatedge {

struct ModeRecord {
  double lam = 0.0;
  int32_t width_idx = 0;
  int32_t path_idx = 0;
  int32_t film_id = -1;  // -1: the path takes no FiLM input (baked)
  uint64_t generation = 0;
};

class ModeRegister {
 public:
  static constexpr uint64_t kNone = ~uint64_t(0);

  // ring: [n_slots, ring_stride] float32 buffers (owned by the caller, outlives the register);
  // the FiLM id of slot s at width w is ring_base + s * n_widths + w.
  ModeRegister(int n_slots, float* ring, int64_t ring_stride, int ring_base, int n_widths, FilmComputer* film)
      : n_slots_(n_slots), ring_(ring), stride_(ring_stride), ring_base_(ring_base), n_widths_(n_widths),
        film_(film), records_(n_slots), pins_(new std::atomic<int32_t>[n_slots]) {
    if (n_slots < 3 || n_slots > 0xffff) throw std::invalid_argument("mode register: n_slots must be in [3, 65535]");
    for (int i = 0; i < n_slots; ++i) pins_[i].store(0);
    published_.store(kNone);
  }

  // A mode whose FiLM vector already exists (a row of the grid table) or that needs none (baked).
  uint64_t publish(double lam, int width_idx, int path_idx, int film_id) {
    std::lock_guard<std::mutex> lock(writer_);
    ++ticket_;
    const int s = claim_slot();
    return commit(s, lam, width_idx, path_idx, film_id);
  }

  // publish() without waiting: 0 when another writer holds the lock or no slot is free at once.
  // The binding tries this with the GIL held and only releases the GIL to wait when it fails:
  // releasing and re-taking the GIL on every switch would queue set_mode behind any other
  // Python thread (a bake) for as long as that thread keeps the GIL.
  uint64_t try_publish(double lam, int width_idx, int path_idx, int film_id) {
    std::unique_lock<std::mutex> lock(writer_, std::try_to_lock);
    if (!lock.owns_lock()) return 0;
    const int s = free_slot();
    if (s < 0) return 0;
    ++ticket_;
    return commit(s, lam, width_idx, path_idx, film_id);
  }

  // An off-grid mode: its FiLM vector is computed into the claimed slot's buffer first.
  uint64_t publish_computed(double lam, int width_idx, int path_idx) {
    if (film_ == nullptr) throw std::logic_error("mode register: no FiLM computer for off-grid λ");
    if (width_idx < 0 || width_idx >= n_widths_) throw std::out_of_range("mode register: width index");
    if (film_->film_size(width_idx) > stride_) throw std::length_error("mode register: ring slot too small");
    std::lock_guard<std::mutex> lock(writer_);
    ++ticket_;
    const int s = claim_slot();
    film_->compute(lam, width_idx, ring_ + static_cast<int64_t>(s) * stride_);
    return commit(s, lam, width_idx, path_idx, ring_base_ + s * n_widths_ + width_idx);
  }

  // Asynchronous off-grid switches: reserve() is the request (it takes a ticket), the vector is
  // computed on another thread, and publish_vector() publishes it only when no publish or
  // reserve came after that ticket (else it returns 0: the request was superseded). So the
  // newest request always wins, whichever thread finishes last.
  uint64_t reserve() {
    std::lock_guard<std::mutex> lock(writer_);
    return ++ticket_;
  }
  uint64_t try_reserve() {  // 0 when another writer holds the lock (see try_publish)
    std::unique_lock<std::mutex> lock(writer_, std::try_to_lock);
    return lock.owns_lock() ? ++ticket_ : 0;
  }

  uint64_t publish_vector(uint64_t ticket, double lam, int width_idx, int path_idx, const float* film, int64_t n) {
    if (width_idx < 0 || width_idx >= n_widths_) throw std::out_of_range("mode register: width index");
    if (n > stride_ || (film_ != nullptr && n != film_->film_size(width_idx)))
      throw std::length_error("mode register: FiLM vector size does not match the width");
    std::lock_guard<std::mutex> lock(writer_);
    if (ticket != ticket_) return 0;
    const int s = claim_slot();
    std::copy(film, film + n, ring_ + static_cast<int64_t>(s) * stride_);
    return commit(s, lam, width_idx, path_idx, ring_base_ + s * n_widths_ + width_idx);
  }

  // Pin the published record; the caller must release(slot) when its inference is done.
  ModeRecord acquire(int* slot_out) {
    for (;;) {
      const uint64_t word = published_.load(std::memory_order_seq_cst);
      if (word == kNone) throw std::runtime_error("mode register: no mode has been set");
      const int s = static_cast<int>(word & 0xffff);
      pins_[s].fetch_add(1, std::memory_order_seq_cst);
      if (published_.load(std::memory_order_seq_cst) == word) {
        *slot_out = s;
        return records_[s];
      }
      pins_[s].fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  void release(int slot) {
    if (slot < 0 || slot >= n_slots_) throw std::out_of_range("mode register: bad slot");
    if (pins_[slot].fetch_sub(1, std::memory_order_seq_cst) <= 0) {
      pins_[slot].fetch_add(1, std::memory_order_seq_cst);
      throw std::logic_error("mode register: release() without acquire()");
    }
  }

  ModeRecord current() {
    int s = -1;
    ModeRecord r = acquire(&s);
    release(s);
    return r;
  }

  int32_t pins(int slot) const { return pins_.get()[slot].load(); }
  int n_slots() const { return n_slots_; }
  uint64_t generation() const {
    const uint64_t w = published_.load();
    return w == kNone ? 0 : (w >> 16);
  }

 private:
  // A slot that is neither the published one nor pinned by a reader. Readers pin for the length
  // of one inference, so with more slots than concurrent inferences a free one always exists;
  // if not, wait for one to be released.
  int claim_slot() {
    for (;;) {
      const int s = free_slot();
      if (s >= 0) return s;
      std::this_thread::yield();
    }
  }

  // One scan for such a slot; -1 when every other slot is pinned right now.
  int free_slot() {
    const uint64_t word = published_.load(std::memory_order_seq_cst);
    const int current = word == kNone ? -1 : static_cast<int>(word & 0xffff);
    for (int i = 1; i <= n_slots_; ++i) {
      const int s = (last_ + i) % n_slots_;
      if (s != current && pins_[s].load(std::memory_order_seq_cst) == 0) {
        last_ = s;
        return s;
      }
    }
    return -1;
  }

  // Fill slot s's record and publish it (writer lock held).
  uint64_t commit(int s, double lam, int width_idx, int path_idx, int film_id) {
    ModeRecord& r = records_[s];
    r.lam = lam;
    r.width_idx = width_idx;
    r.path_idx = path_idx;
    r.film_id = film_id;
    const uint64_t gen = ++generation_;
    r.generation = gen;
    published_.store((gen << 16) | static_cast<uint64_t>(s), std::memory_order_seq_cst);
    return gen;
  }

  const int n_slots_;
  float* ring_;
  const int64_t stride_;
  const int ring_base_;
  const int n_widths_;
  FilmComputer* film_;
  std::vector<ModeRecord> records_;
  std::unique_ptr<std::atomic<int32_t>[]> pins_;
  std::atomic<uint64_t> published_;
  std::mutex writer_;
  uint64_t generation_ = 0;
  uint64_t ticket_ = 0;  // bumped by every publish and reserve (under writer_)
  int last_ = 0;
};

}  // namespace oatedge
