/*
 * distmla: DeepSeek-style MLA (multi-head latent attention) decode over a paged KV cache.
 * C ABI. Every function returns a dmlaResult_t; dmlaGetLastErrorMessage() gives the message of
 * the last failure on the calling thread (it names the argument and the value).
 *
 * Layouts (row-major, last dimension contiguous; see docs/DESIGN.md):
 *   q           [batch, s_q, h_q, 576]                 q_dtype (bf16 or fp16)
 *   kv pool     [num_blocks, page_size, 576]           kv_dtype (bf16 or fp16; same as q)
 *   block_table [batch, max_blocks_per_seq]  int32     physical block of each logical page
 *   seqlens     [batch]                      int32     tokens of each sequence (incl. the s_q new)
 *   out         [batch, s_q, h_q, 512]                 out_dtype (q_dtype, or fp32)
 *   lse         [batch, h_q, s_q]            fp32      natural log; -inf for a row with no token
 * The CPU backend takes host pointers, the CUDA backend device pointers.
 */
#ifndef DISTMLA_DISTMLA_H_
#define DISTMLA_DISTMLA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMLA_D_QK 576   /* latent (512) + rope (64) values per KV token */
#define DMLA_D_V 512    /* V is the first 512 values of the same row */
#define DMLA_D_ROPE 64
#define DMLA_MAX_HEADS 128
#define DMLA_MAX_SQ 4

#define DMLA_VERSION_MAJOR 0
#define DMLA_VERSION_MINOR 1
#define DMLA_VERSION_PATCH 0

typedef enum {
  dmlaSuccess = 0,
  dmlaErrorNullPointer = 1,       /* a required pointer is null */
  dmlaErrorBatch = 2,             /* batch < 0 */
  dmlaErrorHeads = 3,             /* h_q outside 1..128 */
  dmlaErrorQueryLength = 4,       /* s_q outside 1..4 */
  dmlaErrorPageSize = 5,          /* page_size not 16, 32, 64 or 128 */
  dmlaErrorDtype = 6,             /* unsupported or mismatched dtype */
  dmlaErrorShape = 7,             /* another shape field is wrong (num_blocks, max_blocks_per_seq) */
  dmlaErrorNegativeValue = 8,     /* a seqlen or block id is negative */
  dmlaErrorBlockOutOfRange = 9,   /* a block id >= num_blocks (checked mode) */
  dmlaErrorSeqlenOutOfRange = 10, /* a seqlen needs more pages than the block table holds */
  dmlaErrorScale = 11,            /* scale is not finite or not positive */
  dmlaErrorWorkspace = 12,        /* workspace too small or misaligned */
  dmlaErrorBackend = 13,          /* backend not available (no usable GPU, not sm_90) */
  dmlaErrorCuda = 14,             /* a CUDA runtime call failed */
  dmlaErrorOutOfBlocks = 15,      /* block manager: not enough free blocks */
  dmlaErrorNotFound = 16,         /* block manager: unknown sequence id */
  dmlaErrorComm = 17,             /* communicator / bootstrap failure */
  dmlaErrorTimeout = 18,          /* a deadline passed */
  dmlaErrorInternal = 19,
  dmlaErrorInvalidArgument = 20   /* any other bad argument */
} dmlaResult_t;

typedef enum { dmlaBF16 = 0, dmlaFP16 = 1, dmlaFP32 = 2 } dmlaDataType_t;

typedef enum {
  dmlaBackendAuto = 0, /* CUDA when a usable sm_90 device exists, else CPU */
  dmlaBackendCuda = 1,
  dmlaBackendCpu = 2
} dmlaBackend_t;

/* Everything that is fixed for a decode step: planning validates it and sizes the workspace. */
typedef struct {
  int batch;              /* >= 0 (0 is a no-op) */
  int s_q;                /* 1..4 query tokens a sequence (MTP / speculative decode) */
  int h_q;                /* 1..128 query heads */
  int page_size;          /* 16, 32, 64 or 128 tokens a block */
  int num_blocks;         /* blocks in the KV pool, >= 1 */
  int max_blocks_per_seq; /* columns of the block table, >= 1 */
  dmlaDataType_t q_dtype;   /* bf16 or fp16 */
  dmlaDataType_t kv_dtype;  /* must equal q_dtype */
  dmlaDataType_t out_dtype; /* q_dtype, or fp32. CUDA backend: a sequence split over several
                               multiprocessors has its partial results kept in this type too
                               (16-bit: one more rounding, ~1e-4 on the relative error; fp32 out
                               keeps fp32 partials) */
  float scale;            /* softmax scale; 0 means 1/sqrt(576) */
  int causal;             /* with s_q > 1: query t sees tokens 0 .. L - s_q + t */
  int check_inputs;       /* 1: run() also validates block ids and seqlens (reads them; the
                             CUDA backend copies them to the host and synchronises the stream,
                             so a checked run cannot be graph-captured) */
} dmlaDecodeShape_t;

/* CUDA backend: q, kv_pool and out 16-byte aligned, lse 4-byte aligned (cudaMalloc gives 256);
   run() rejects other addresses with dmlaErrorInvalidArgument. */
typedef struct {
  const void* q;
  const void* kv_pool;
  const int32_t* block_table;
  const int32_t* seqlens;
  void* out;
  float* lse;
} dmlaDecodeTensors_t;

typedef struct dmlaPlan* dmlaPlan_t;

/* Fills a shape with the defaults (page 64, bf16, scale 0 = 1/sqrt(576), causal 1, s_q 1,
   h_q 1, check_inputs 0). batch, num_blocks and max_blocks_per_seq are left 0: the caller sizes
   them (a plan with num_blocks or max_blocks_per_seq 0 is rejected). */
void dmlaShapeInit(dmlaDecodeShape_t* shape);

const char* dmlaGetErrorString(dmlaResult_t result);
/* Message of the last failure on this thread ("" if none). */
const char* dmlaGetLastErrorMessage(void);

/* Which backend Auto resolves to on this machine. */
dmlaResult_t dmlaResolveBackend(dmlaBackend_t requested, dmlaBackend_t* resolved);

/* Validates shape, resolves the backend and sizes the workspace. For CUDA the current device
   is used and remembered; nothing is allocated on the device. */
dmlaResult_t dmlaPlanCreate(dmlaPlan_t* plan, const dmlaDecodeShape_t* shape, dmlaBackend_t backend);
dmlaResult_t dmlaPlanDestroy(dmlaPlan_t plan);
dmlaResult_t dmlaPlanGetBackend(dmlaPlan_t plan, dmlaBackend_t* backend);
/* Bytes of workspace run() needs (device memory for CUDA, host memory for CPU; may be 0). */
dmlaResult_t dmlaPlanGetWorkspaceSize(dmlaPlan_t plan, size_t* bytes);

/* One decode step. Validates the tensors, then launches on stream (CUDA) or computes on the
   calling thread's pool (CPU; stream ignored). Never synchronises the stream unless
   check_inputs is set. Allocates nothing: can be captured in a CUDA graph. */
dmlaResult_t dmlaRun(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors, void* workspace,
                     size_t workspace_bytes, void* stream /* cudaStream_t */);

/* dmlaRunEx flags. */
#define DMLA_RUN_REUSE_SCHEDULE 1u /* reuse the split schedule a previous run with the same
                                      seqlens left in this workspace (e.g. the next layer) */
dmlaResult_t dmlaRunEx(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors, void* workspace,
                       size_t workspace_bytes, void* stream, unsigned flags);

/* Head-sliced output: the h_q heads in num_slices consecutive slices, the first
   h_q % num_slices one head larger. Slice c's rows go to (char*)out + c * out_slice_stride as
   [batch, s_q, max_slice, 512] (out dtype) and its lse to (char*)lse + c * lse_slice_stride as
   [batch, max_slice, s_q]. The distributed decoder writes its all-to-all send chunks this way
   (no separate pack). One slice with max_slice = h_q is the plain layout. */
typedef struct {
  int num_slices;          /* >= 1 */
  int max_slice;           /* >= ceil(h_q / num_slices) */
  size_t out_slice_stride; /* bytes, a multiple of 16, at least one slice's o block */
  size_t lse_slice_stride; /* bytes, a multiple of 4, at least one slice's lse block */
} dmlaHeadSlices_t;

/* dmlaRunEx writing out and lse in head slices (slices null: the plain layout). */
dmlaResult_t dmlaRunSliced(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors,
                           const dmlaHeadSlices_t* slices, void* workspace, size_t workspace_bytes,
                           void* stream, unsigned flags);

#ifdef __cplusplus
}
#endif

#endif /* DISTMLA_DISTMLA_H_ */
