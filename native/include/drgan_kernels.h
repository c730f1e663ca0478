/* drgan kernels: the project's Triton kernels, compiled ahead of time, behind a C API.
 *
 * Every function takes device pointers, shapes and strides (in elements, not bytes), launches on
 * `stream` in the CUDA context current on the calling thread, and returns without synchronizing.
 * No allocation happens inside: ops that need scratch memory take a device `workspace` of at least
 * the size their *_workspace_size() function returns. The CUDA driver (libcuda.so.1) is loaded on
 * the first launch; kernel images load once per context. Thread-safe.
 *
 * Tensors are fp16 or bf16. Device pointers must be 16-byte aligned unless noted (any pointer from
 * cudaMalloc is). Layouts with a unit stride along the feature axis and strides divisible by 16
 * take specialized kernels; other strides are accepted and run a generic, slower kernel.
 */
#ifndef DRGAN_KERNELS_H
#define DRGAN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DRGAN_API __attribute__((visibility("default")))

/* A CUstream or cudaStream_t (the same type); NULL is the legacy default stream. */
typedef struct CUstream_st* drgan_stream;

typedef enum {
    DRGAN_FLOAT16 = 0,
    DRGAN_BFLOAT16 = 1,
} drgan_dtype;

typedef enum {
    DRGAN_SUCCESS = 0,
    DRGAN_ERROR_INVALID_VALUE = 1, /* a shape, stride, scale, dtype or pointer the op does not take */
    DRGAN_ERROR_UNSUPPORTED = 2,   /* no compiled kernel for this case (e.g. Q/K width beyond DRGAN_QK_BLOCKS) */
    DRGAN_ERROR_WORKSPACE = 3,     /* workspace NULL or smaller than the op's *_workspace_size() */
    DRGAN_ERROR_NO_DRIVER = 4,     /* libcuda.so.1 could not be loaded (no NVIDIA driver) */
    DRGAN_ERROR_NO_CONTEXT = 5,    /* no CUDA context is current on this thread */
    DRGAN_ERROR_DEVICE = 6,        /* no kernel image runs on this GPU (below sm_80, or too little shared memory) */
    DRGAN_ERROR_CUDA = 7,          /* a CUDA driver call failed */
} drgan_status;

/* A constant name for a status, e.g. "DRGAN_ERROR_WORKSPACE". */
DRGAN_API const char* drgan_status_string(drgan_status status);

/* One line describing the last failure on this thread (the argument or driver call at fault). */
DRGAN_API const char* drgan_last_error(void);

/* Spatial attention forward (DANet's position attention, flash-style, softmax in fp32):
 *   out[b, i, :] = sum_j softmax_j(scale * q[b, i, :] . k[b, j, :]) v[b, j, :]
 * q, k: (batch, n, qk_dim); v, out: (batch, n, v_dim). scale > 0. qk_dim up to the largest padded
 * Q/K width compiled (DRGAN_QK_BLOCKS, 128 by default). */
DRGAN_API size_t drgan_spatial_attention_workspace_size(int64_t batch, int64_t n);
DRGAN_API drgan_status drgan_spatial_attention_fwd(
    const void* q, const int64_t q_strides[3],
    const void* k, const int64_t k_strides[3],
    const void* v, const int64_t v_strides[3],
    void* out, const int64_t out_strides[3],
    int64_t batch, int64_t n, int64_t qk_dim, int64_t v_dim,
    float scale, drgan_dtype dtype,
    void* workspace, size_t workspace_size, drgan_stream stream);

/* Channel attention forward (DANet): out[b] = softmax(rowmax(E) - E) x[b] with E = x[b] x[b]^T.
 * x, out: (batch, channels, n), out with x's strides (a channels_last map flattened to (B, C, N)
 * has unit stride along C). */
DRGAN_API size_t drgan_channel_attention_workspace_size(int64_t batch, int64_t channels, int64_t n);
DRGAN_API drgan_status drgan_channel_attention_fwd(
    const void* x, void* out, const int64_t strides[3],
    int64_t batch, int64_t channels, int64_t n,
    drgan_dtype dtype, void* workspace, size_t workspace_size, drgan_stream stream);

/* AdaIN forward: y = gamma * (x - mean_hw) / sqrt(var_hw + eps) + beta per (b, c), biased variance.
 * x, y: (batch, channels, height, width), y with x's strides; H and W must merge into one axis
 * (contiguous or channels_last). gamma, beta: contiguous (batch, channels) in x's dtype. */
DRGAN_API size_t drgan_adain_workspace_size(int64_t batch, int64_t channels, int64_t height, int64_t width);
DRGAN_API drgan_status drgan_adain_fwd(
    const void* x, const void* gamma, const void* beta, void* y, const int64_t strides[4],
    int64_t batch, int64_t channels, int64_t height, int64_t width,
    float eps, drgan_dtype dtype, void* workspace, size_t workspace_size, drgan_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* DRGAN_KERNELS_H */
