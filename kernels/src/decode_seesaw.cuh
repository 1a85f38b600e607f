// Split decode, wgmma "seesaw" path (v5), included by decode_sm90.cu (uses its constants,
// Params, Meta and PTX helpers).
//
// Why: in v3 both consumer warpgroups work on the same 64-token block, so each Q K^T is an
// m64n32 product (shared-memory bound: 3 KB read per 16 tensor cycles) and the tensor core idles
// while both warpgroups run the softmax. Here the blocks of a sequence alternate between the
// warpgroups: WG0 owns blocks t = 0, 2, 4, ... (buffer 0), WG1 owns t = 1, 3, 5, ... (buffer 1),
// each computing Q K^T of its own block as m64n64 products, so one warpgroup's softmax runs
// while the other's products keep the tensor core busy. Both still write 256 of the 512 output
// columns (WG0 V[:, 0:256), WG1 V[:, 256:512)) for every block, so P is exchanged through smem.
//
// One pair of blocks (t0 = 2k by WG0, t1 = 2k + 1 by WG1; t1 may not exist):
//   WG0: m_a = max(m, rowmax S0); P0 = exp2(S0 - m_a); O_L = O_L * 2^(m - m_a) + P0 V0_L
//   WG1: m_b = max(m_a, rowmax S1); P1 = exp2(S1 - m_b)         (needs m_a: barrier Scale0)
//        O_R = O_R * 2^(m - m_b) + P1 V1_R + (P0 2^(m_a - m_b)) V0_R
//   WG0: O_L = O_L * 2^(m_a - m_b) + P1 V1_L                      (needs P1: barrier P)
// WG0 writes P0 already rescaled to m_b into smem (it waits for WG1's scale, Scale1), so WG1
// rescales its accumulators once per pair. Each P goes into the rope chunk (columns 512..575)
// of its own KV buffer, which only Q K^T reads: the smem plan is Q + two KV tiles (216 KB).
//
// Pipeline: a producer warp issues TMA per 64-column chunk, each chunk on its own mbarrier
// (Q K^T starts on chunk 0 while the rest land). A buffer is refilled in two halves: chunks
// 0..3 once WG0 finished P V on them (emptyL, 4 warp arrivals), chunks 4..8 once WG1 did
// (emptyR): those are the last readers of each half (the owner's Q K^T and the P in chunk 8
// are consumed before; chunk 8 is reloaded after both halves). Named barriers 2..4 (Scale0,
// Scale1 when block t1 exists, P) are rendezvous of both warpgroups, in that order, once a pair.
#pragma once

constexpr int kSeesawSmemBytes = kTileBytes * 3 + 32 * 8 /*barriers*/ + 6 * kBlockM * 4 + 1024 /*align*/;
constexpr int kThreadsSeesaw = 384;  // WG0, WG1 consumers + a producer warpgroup

enum SeesawBarrier : int { kBarScale0 = 2, kBarScale1 = 3, kBarP = 4, kBarWg0 = 6 };

// Rendezvous of the two consumer warpgroups (256 threads) on a named barrier. (A bar.arrive /
// bar.sync producer-consumer pair would let the writer run on, but compute-sanitizer racecheck
// does not follow it and reports every exchange as a race; the rendezvous costs no measurable time.)
template <int Id>
__device__ __forceinline__ void named_sync() {
  asm volatile("bar.sync %0, 256;\n" ::"n"(Id) : "memory");
}
// Barrier of one consumer warpgroup (128 threads).
__device__ __forceinline__ void wg_sync(int wg) {
  static_assert(kBarWg0 == 6, "barriers 6 and 7 are the per-warpgroup ones");
  if (wg == 0)
    asm volatile("bar.sync 6, 128;\n" ::: "memory");
  else
    asm volatile("bar.sync 7, 128;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <int N>
__device__ __forceinline__ void reg_fence_u(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// mbarrier wait whose loop condition is warp-uniform (vote.all): ptxas then keeps wgmma groups
// issued before the wait in flight (a plain try_wait loop between groups counts as a divergent
// path and serialises every wgmma of the kernel, C7520).
__device__ __forceinline__ void mbar_wait_uniform(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!__all_sync(0xffffffffu, done));
}

// Order in which the chunks of buffer b are loaded and multiplied: buffer 0 is released first
// by WG0 (chunks 0..3, after P0 V0_L), buffer 1 first by WG1 (chunks 4..7, after P1 V1_R), so
// each buffer starts with the half that frees up first; chunk 8 (which holds P) comes last.
__device__ __forceinline__ int chunk_at(int b, int pos) {
  return b == 0 ? pos : (pos < 4 ? pos + 4 : (pos < 8 ? pos - 4 : 8));
}

// S (+)= Q K^T over positions [P0, P1) of buffer B's chunk order; each chunk waits for its TMA
// barrier and is committed as its own wgmma group (callers count groups in wgmma_wait<N>).
// The warpgroup index must be warp-uniform to ptxas (see the kernel), or the wait loops between
// groups make it serialise every wgmma of the kernel (C7520).
template <typename Elem, int B, int P0, int P1>
__device__ __forceinline__ void seesaw_qk(float (&s)[32], uint32_t sQ, uint32_t sK, uint32_t full, uint32_t parity) {
#pragma unroll
  for (int pos = P0; pos < P1; ++pos) {
    const int c = chunk_at(B, pos);
    mbar_wait(full + 8 * c, parity);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t da = make_desc(sQ + c * kChunkBytes + kk * 32, 16, 1024);
      const uint64_t db = make_desc(sK + c * kChunkBytes + kk * 32, 16, 1024);
      ElemTraits<Elem>::qk64(s, da, db, (pos | kk) != 0 ? 1 : 0);
    }
    wgmma_commit();
  }
}

// O += P V for this warpgroup's 256 columns of buffer sK; P from registers (the wgmma A layout
// equals the m64n64 accumulator layout, k-slice kk = accumulators 8kk .. 8kk + 7).
template <typename Elem>
__device__ __forceinline__ void seesaw_pv_rs(float (&o)[128], const uint32_t (&pa)[16], uint32_t sK, int wg) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
    ElemTraits<Elem>::pv_rs(o, a, make_desc(sK + (4 * wg) * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024));
  }
  wgmma_commit();
}
// Same with P from smem (the other warpgroup's block: [64 rows][64 tokens], K-major, swizzled).
template <typename Elem>
__device__ __forceinline__ void seesaw_pv_ss(float (&o)[128], uint32_t sP, uint32_t sK, int wg) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    ElemTraits<Elem>::pv_ss(o, make_desc(sP + kk * 32, 16, 1024),
                            make_desc(sK + (4 * wg) * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024));
  }
  wgmma_commit();
}

template <typename Elem>
__global__ void __launch_bounds__(kThreadsSeesaw, 1)
    decode_seesaw_kernel(const __grid_constant__ CUtensorMap kv_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV = base + kTileBytes;  // buffer b at sKV + b * kTileBytes
  const uint32_t bars = base + 3 * kTileBytes;
  // full[b][c] = bars + 8 * (9b + c); emptyL[b] = bars + 8 * (18 + b); emptyR[b] = bars + 8 * (20 + b)
  const uint32_t emptyL = bars + 8 * 18, emptyR = bars + 8 * 20;
  uint8_t* gQ = gbase;
  uint8_t* gKV = gbase + kTileBytes;
  float* sMa = reinterpret_cast<float*>(gbase + 3 * kTileBytes + 32 * 8);
  float* sSc0 = sMa + kBlockM;
  float* sMb = sSc0 + kBlockM;
  float* sSc1 = sMb + kBlockM;
  float* sSum = sSc1 + kBlockM;  // [2][64]

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform for ptxas
  const int lane = tid % 32;
  const int warp_in_wg = (tid % 128) / 32;
  const int part = blockIdx.x;
  const int tile = blockIdx.y;

  if (tid == 0) {
    for (int i = 0; i < 18; ++i) mbar_init(bars + 8 * i, 1);
    for (int b = 0; b < 2; ++b) {
      mbar_init(emptyL + 8 * b, 4);
      mbar_init(emptyR + 8 * b, 4);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();

  pdl_wait();
  pdl_launch_dependents();

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];
  if (seq_begin >= seq_end) return;

  if (wg == 2) {
    // ---- producer: one thread; block t of a sequence goes to buffer t & 1 ----
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid != 256) return;
    uint32_t use0 = 0, use1 = 0;  // loads into buffer 0 / 1 so far
    const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
    const int pieces = kBlockN / R;
    for (int i = seq_begin; i < seq_end; ++i) {
      int a, e;
      part_block_range(m, W, part, i, a, e);
      const int L = m.seq_len[i];
      const int32_t* bt = p.block_table + static_cast<size_t>(i) * p.max_blocks_per_seq;
      for (int n = a; n < e; ++n) {
        const int b = (n - a) & 1;
        const uint32_t dst = sKV + b * kTileBytes;
        // up to 4 pieces (page 16): pool rows of the pages that hold a token below the length;
        // fully unrolled so that rows[] stays in registers
        int rows[4];
        int npieces = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int tok0 = n * kBlockN + k * R;
          rows[k] = 0;
          if (k < pieces && tok0 < L) {
            int lp = tok0 / p.page_size;
            if (lp >= p.max_blocks_per_seq) lp = p.max_blocks_per_seq - 1;
            int phys = __ldg(bt + lp);
            phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
            rows[k] = phys * p.page_size + tok0 % p.page_size;
            npieces = k + 1;
          }
        }
        const uint32_t bytes = static_cast<uint32_t>(npieces * R * 128);
        const uint32_t use = b ? use1 : use0;
        const uint32_t parity = (use - 1) & 1;
        // the half that frees up first (see chunk_at), then the other half and chunk 8
        const uint32_t first = b == 0 ? emptyL : emptyR + 8, second = b == 0 ? emptyR : emptyL + 8;
        for (int pos = 0; pos < kChunks; ++pos) {
          const int c = chunk_at(b, pos);
          if (use > 0 && pos == 0) mbar_wait(first, parity);
          if (use > 0 && pos == 4) mbar_wait(second, parity);
          const uint32_t full = bars + 8 * (9 * b + c);
          mbar_arrive_expect_tx(full, bytes);
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (k < npieces) tma_load_2d(dst + c * kChunkBytes + k * R * 128, &kv_map, full, c * 64, rows[k]);
        }
        if (b) ++use1; else ++use0;
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  // ---- consumers ----
  const float NEG_INF = -INFINITY;
  const int r0 = warp_in_wg * 16 + lane / 4;  // rows r0 and r0 + 8 of the tile
  const int cq = 2 * (lane % 4);
  const uint32_t sOwn = sKV + wg * kTileBytes;     // the buffer of this warpgroup's blocks
  const uint32_t fullOwn = bars + 8 * (9 * wg);
  uint8_t* gOwn = gKV + wg * kTileBytes;
  uint32_t own_use = 0;  // uses of the own buffer (its full-barrier phase)

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const int nsplit = m.seq_nsplit[i];
    const int split_idx = part - m.seq_first_part[i];
    const int nblk = e - a;

    consumer_sync();  // every read of sQ and sSum of the previous sequence is complete
    {
      const uint16_t* q = static_cast<const uint16_t*>(p.q);
      constexpr int kIters = kBlockM * kChunks * 8 / kThreads;  // 18
      constexpr int kBatch = kIters / 2;
#pragma unroll 1
      for (int b0 = 0; b0 < kIters; b0 += kBatch) {
        uint4 v[kBatch];
#pragma unroll
        for (int it = 0; it < kBatch; ++it) {
          const int idx = tid + (b0 + it) * kThreads;
          const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
          const int gr = tile * kBlockM + r;
          v[it] = make_uint4(0, 0, 0, 0);
          if (gr < p.rows)
            v[it] = __ldg(reinterpret_cast<const uint4*>(q + (static_cast<size_t>(i) * p.rows + gr) * kDQK +
                                                         c * 64 + u * 8));
        }
#pragma unroll
        for (int it = 0; it < kBatch; ++it) {
          const int idx = tid + (b0 + it) * kThreads;
          const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
          *reinterpret_cast<uint4*>(gQ + c * kChunkBytes + r * 128 + ((u ^ (r & 7)) * 16)) = v[it];
        }
      }
      fence_proxy_async();
    }
    consumer_sync();

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int t = (tile * kBlockM + r0 + 8 * h) / p.h_q;
      if (t >= p.s_q) t = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + t) : L;
    }
    const int lim_min = min(lim[0], lim[1]);

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float mrun[2] = {NEG_INF, NEG_INF};
    float lsum[2] = {0.f, 0.f};  // this warpgroup's blocks only, at the running max
    float s[32];

    // S of the first own block
    if (wg < nblk) {
      wgmma_fence();
      if (wg == 0)
        seesaw_qk<Elem, 0, 0, kChunks>(s, sQ, sOwn, fullOwn, own_use & 1);
      else
        seesaw_qk<Elem, 1, 0, kChunks>(s, sQ, sOwn, fullOwn, own_use & 1);
      wgmma_wait<0>();
      reg_fence(s);
    }

    for (int t0 = 0; t0 < nblk; t0 += 2) {
      const bool has1 = t0 + 1 < nblk;
      const bool own = wg == 0 || has1;
      float mnew[2];
      uint32_t pa[16];
      if (own) {
        // ---- own block: mask, zero V rows past the length, row max ----
        const int n = a + t0 + wg;
        const int tok0 = n * kBlockN;
        if (tok0 + kBlockN > lim_min) {
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int x = 0; x < 2; ++x)
                if (tok0 + 8 * j + cq + x >= lim[h]) s[4 * j + 2 * h + x] = NEG_INF;
        }
        const int valid = min(L - tok0, kBlockN);
        if (valid < kBlockN) {
          // rows past the length may hold NaN (or stale data): P is 0 there, V must be finite
          for (int idx = tid % 128; idx < (kBlockN - valid) * 8 * 8; idx += 128) {
            const int u = idx % 8, c = (idx / 8) % 8, r = valid + idx / 64;
            *reinterpret_cast<uint4*>(gOwn + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
          }
          fence_proxy_async();
          wg_sync(wg);
        }
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) mx[h] = fmaxf(mx[h], fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          mx[h] *= p.scale_log2;
        }
        if (wg == 1) {
          named_sync<kBarScale0>();  // m_a and WG0's scale are in smem
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float ma = sMa[r0 + 8 * h];
            const float sc0 = sSc0[r0 + 8 * h];
            const float mb = fmaxf(ma, mx[h]);
            const float sc1 = exp2f(ma - (mb == NEG_INF ? 0.f : mb));
            if ((lane & 3) == 0) {
              sMb[r0 + 8 * h] = mb;
              sSc1[r0 + 8 * h] = sc1;
            }
            mnew[h] = mb;
            const float f = sc0 * sc1;
            mx[h] = f;  // reuse: this warpgroup's accumulator scale
          }
          named_sync<kBarScale1>();
        } else {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float ma = fmaxf(mrun[h], mx[h]);
            const float sc0 = exp2f(mrun[h] - (ma == NEG_INF ? 0.f : ma));
            if ((lane & 3) == 0) {
              sMa[r0 + 8 * h] = ma;
              sSc0[r0 + 8 * h] = sc0;
            }
            mnew[h] = ma;
            mx[h] = sc0;
          }
          named_sync<kBarScale0>();
        }
        // ---- P = exp2(S * scale - m_new), row sums, accumulator rescale ----
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float bh = mnew[h] == NEG_INF ? 0.f : mnew[h];
          float sum = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const float v = exp2f(fmaf(s[4 * j + 2 * h + x], p.scale_log2, -bh));
              s[4 * j + 2 * h + x] = v;
              sum += v;
            }
          lsum[h] = lsum[h] * mx[h] + sum;
        }
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          o[4 * j + 0] *= mx[0];
          o[4 * j + 1] *= mx[0];
          o[4 * j + 2] *= mx[1];
          o[4 * j + 3] *= mx[1];
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int q4 = 0; q4 < 4; ++q4)
            pa[4 * kk + q4] = ElemTraits<Elem>::pack(s[8 * kk + 2 * q4], s[8 * kk + 2 * q4 + 1]);
      }

      if (wg == 0) {
        // O_L += P0 V0_L
        reg_fence(o);
        wgmma_fence();
        seesaw_pv_rs<Elem>(o, pa, sOwn, 0);
        // P0 for WG1, rescaled to m_b (WG1's max) -> chunk 8 of buffer 0
        float sc1[2] = {1.f, 1.f};
        if (has1) {
          named_sync<kBarScale1>();
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            sc1[h] = sSc1[r0 + 8 * h];
            mnew[h] = sMb[r0 + 8 * h];
          }
        }
        uint8_t* gP = gOwn + 8 * kChunkBytes;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            *reinterpret_cast<uint32_t*>(gP + r * 128 + ((j ^ (r & 7)) * 16) + cq * 2) =
                ElemTraits<Elem>::pack(s[4 * j + 2 * h] * sc1[h], s[4 * j + 2 * h + 1] * sc1[h]);
          }
        fence_proxy_async();
        named_sync<kBarP>();  // P0 and P1 are in smem
        wgmma_wait<0>();
        reg_fence(o);
        reg_fence_u(pa);
        __syncwarp();
        if (lane == 0) mbar_arrive(emptyL);  // buffer 0, chunks 0..3: read for the last time
        mrun[0] = mnew[0];
        mrun[1] = mnew[1];
        // ptxas serialises every wgmma of the kernel (C7520) if a wgmma is issued, or a wait loop
        // spins, where paths with different groups in flight join: each branch below is closed.
        if (has1) {
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            o[4 * j + 0] *= sc1[0];
            o[4 * j + 1] *= sc1[0];
            o[4 * j + 2] *= sc1[1];
            o[4 * j + 3] *= sc1[1];
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) lsum[h] *= sc1[h];
          reg_fence(o);
          wgmma_fence();
          seesaw_pv_ss<Elem>(o, sKV + kTileBytes + 8 * kChunkBytes, sKV + kTileBytes, 0);
          if (t0 + 2 < nblk) {
            ++own_use;
            seesaw_qk<Elem, 0, 0, 4>(s, sQ, sOwn, fullOwn, own_use & 1);
            wgmma_wait<4>();  // P1 V1_L done: release buffer 1's first half
            __syncwarp();
            if (lane == 0) mbar_arrive(emptyL + 8);
            seesaw_qk<Elem, 0, 4, kChunks>(s, sQ, sOwn, fullOwn, own_use & 1);
            wgmma_wait<0>();
            reg_fence(s);
          } else {
            wgmma_wait<0>();
            __syncwarp();
            if (lane == 0) mbar_arrive(emptyL + 8);
          }
        }
        reg_fence(o);
      } else {
        if (has1) {
          // P1 -> chunk 8 of buffer 1 for WG0
          uint8_t* gP = gOwn + 8 * kChunkBytes;
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int r = r0 + 8 * h;
              *reinterpret_cast<uint32_t*>(gP + r * 128 + ((j ^ (r & 7)) * 16) + cq * 2) =
                  ElemTraits<Elem>::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
            }
          fence_proxy_async();
        } else {
          // no block of its own: rescale to m_a for P0; P1 = 0 below against buffer 0's V
          // (finite once P0 is ready), so that product adds exact zeros
          named_sync<kBarScale0>();
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            mnew[h] = sMa[r0 + 8 * h];
            const float sc0 = sSc0[r0 + 8 * h];
            lsum[h] *= sc0;
#pragma unroll
            for (int j = 0; j < 32; ++j) {
              o[4 * j + 2 * h] *= sc0;
              o[4 * j + 2 * h + 1] *= sc0;
            }
          }
#pragma unroll
          for (int k = 0; k < 16; ++k) pa[k] = 0u;
          named_sync<kBarP>();  // buffer 0 (loaded, tail rows zeroed) is readable from here
        }
        // O_R += P1 V1_R (registers); issued on every path so that the wgmma state never
        // differs where the branches join (C7520)
        reg_fence(o);
        wgmma_fence();
        seesaw_pv_rs<Elem>(o, pa, has1 ? sOwn : sKV, 1);
        // O_R += P0 V0_R (P0 from smem, already at this pair's final max)
        if (has1) named_sync<kBarP>();
        seesaw_pv_ss<Elem>(o, sKV + 8 * kChunkBytes, sKV, 1);
        wgmma_wait<1>();  // P1 V1_R done
        reg_fence_u(pa);
        __syncwarp();
        if (has1 && lane == 0) mbar_arrive(emptyR + 8);  // buffer 1, chunks 4..8
        wgmma_wait<0>();
        reg_fence(o);
        __syncwarp();
        if (lane == 0) mbar_arrive(emptyR);  // buffer 0, chunks 4..8
        mrun[0] = mnew[0];
        mrun[1] = mnew[1];
        if (t0 + 3 < nblk) {
          ++own_use;
          wgmma_fence();
          seesaw_qk<Elem, 1, 0, kChunks>(s, sQ, sOwn, fullOwn, own_use & 1);
          wgmma_wait<0>();
          reg_fence(s);
        }
      }
    }
    if (wg < nblk) ++own_use;  // the last own block's phase was consumed

    // ---- epilogue: row sums of both warpgroups ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lsum[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    consumer_sync();
    float lse_r[2], inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sSum[r0 + 8 * h] + sSum[kBlockM + r0 + 8 * h];
      if (l > 0.f && mrun[h] != NEG_INF) {
        inv[h] = 1.f / l;
        lse_r[h] = (mrun[h] + log2f(l)) * 0.69314718055994530942f;
      } else {
        inv[h] = 0.f;
        lse_r[h] = NEG_INF;
      }
    }
    write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, nsplit <= 1,
                     static_cast<size_t>(m.seq_split_base[i] + split_idx));
  }
}
