/* Spatial attention forward: the flash-style kernel of kernels/spatial_attention_triton.py. */
#include "runtime.h"

DRGAN_API size_t drgan_spatial_attention_workspace_size(int64_t batch, int64_t n) {
    /* The kernel always writes the log-sum-exp (the training backward reads it). */
    return batch > 0 && n > 0 ? drgan_round_up((size_t)batch * (size_t)n * sizeof(float)) : 0;
}

/* Q/K width in registers: the next power of two, at least the tensor-core minimum. */
static int block_d(int64_t qk_dim) {
    int width = DRGAN_SPATIAL_MIN_BLOCK_D;
    while (width < qk_dim) width *= 2;
    return width;
}

DRGAN_API drgan_status drgan_spatial_attention_fwd(
    const void* q, const int64_t q_strides[3],
    const void* k, const int64_t k_strides[3],
    const void* v, const int64_t v_strides[3],
    void* out, const int64_t out_strides[3],
    int64_t batch, int64_t n, int64_t qk_dim, int64_t v_dim,
    float scale, drgan_dtype dtype,
    void* workspace, size_t workspace_size, drgan_stream stream) {
    if (dtype != DRGAN_FLOAT16 && dtype != DRGAN_BFLOAT16)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: dtype %d is not DRGAN_FLOAT16 or DRGAN_BFLOAT16", dtype);
    if (!q || !k || !v || !out || !q_strides || !k_strides || !v_strides || !out_strides)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: a tensor pointer or stride array is NULL");
    if (batch < 1 || n < 1 || qk_dim < 1 || v_dim < 1)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: batch %lld, n %lld, qk_dim %lld, v_dim %lld must be >= 1",
                          (long long)batch, (long long)n, (long long)qk_dim, (long long)v_dim);
    /* The kernel's running maximum is max(scores) * scale, which needs scale > 0. */
    if (!(scale > 0.0f))
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: scale %g must be > 0", (double)scale);
    if (qk_dim > DRGAN_SPATIAL_MAX_QK_DIM)
        return drgan_fail(DRGAN_ERROR_UNSUPPORTED, "spatial attention: qk_dim %lld exceeds %d", (long long)qk_dim,
                          DRGAN_SPATIAL_MAX_QK_DIM);
    if (batch > 65535)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: batch %lld exceeds the grid limit 65535", (long long)batch);
    if (workspace_size < drgan_spatial_attention_workspace_size(batch, n) || !workspace)
        return drgan_fail(DRGAN_ERROR_WORKSPACE, "spatial attention: workspace of %zu B, needs %zu B", workspace_size,
                          drgan_spatial_attention_workspace_size(batch, n));

    drgan_arg args[SPATIAL_FWD_NARGS] = {0};
    args[SPATIAL_FWD_Q].ptr = (uint64_t)(uintptr_t)q;
    args[SPATIAL_FWD_K].ptr = (uint64_t)(uintptr_t)k;
    args[SPATIAL_FWD_V].ptr = (uint64_t)(uintptr_t)v;
    args[SPATIAL_FWD_O].ptr = (uint64_t)(uintptr_t)out;
    args[SPATIAL_FWD_LSE].ptr = (uint64_t)(uintptr_t)workspace;
    const int64_t* strides[4] = {q_strides, k_strides, v_strides, out_strides};
    static const char* names[4] = {"q", "k", "v", "out"};
    drgan_status status = DRGAN_SUCCESS;
    for (int t = 0; t < 4 && status == DRGAN_SUCCESS; ++t) {
        /* Offsets within one sample are 32-bit in the kernel (the batch offset is 64-bit). */
        int64_t width = t < 2 ? qk_dim : v_dim;
        int64_t extent = (n - 1) * strides[t][1] + (width - 1) * strides[t][2];
        if (strides[t][1] < 0 || strides[t][2] < 0 || extent > INT32_MAX)
            return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "spatial attention: %s strides (%lld, %lld) span more than 2^31 elements per sample",
                              names[t], (long long)strides[t][1], (long long)strides[t][2]);
        for (int axis = 0; axis < 3 && status == DRGAN_SUCCESS; ++axis)
            status = drgan_set_i32(args, SPATIAL_FWD_STRIDE_QB + 3 * t + axis, strides[t][axis], names[t]);
    }
    if (status == DRGAN_SUCCESS) status = drgan_set_i32(args, SPATIAL_FWD_N, n, "n");
    if (status != DRGAN_SUCCESS) return status;
    args[SPATIAL_FWD_DQK].i32 = (int32_t)qk_dim;
    args[SPATIAL_FWD_DV].i32 = (int32_t)v_dim;
    args[SPATIAL_FWD_QK_SCALE].f32 = (float)(scale * DRGAN_LOG2E); /* exp2 inside: log2(e) folded into the scale */

    const drgan_image* image;
    /* The kernels mask the columns past qk_dim: any compiled width from block_d(qk_dim) up serves. */
    int width = block_d(qk_dim);
    status = drgan_select(DRGAN_K_SPATIAL_FWD, dtype, width, -1, args, &image);
    while (status == DRGAN_ERROR_UNSUPPORTED && width < DRGAN_SPATIAL_MAX_QK_DIM) {
        width *= 2;
        status = drgan_select(DRGAN_K_SPATIAL_FWD, dtype, width, -1, args, &image);
    }
    if (status == DRGAN_ERROR_UNSUPPORTED)
        return drgan_fail(status, "spatial attention: qk_dim %lld needs a padded Q/K width of at least %d, which this "
                          "build did not compile (CMake option DRGAN_QK_BLOCKS)", (long long)qk_dim, block_d(qk_dim));
    if (status != DRGAN_SUCCESS) return status;
    int64_t grid_m = drgan_cdiv(n, drgan_const(image, SPATIAL_FWD_BLOCK_M));
    int64_t grid_v = drgan_cdiv(v_dim, drgan_const(image, SPATIAL_FWD_BLOCK_DV));
    return drgan_launch(image, grid_m, grid_v, batch, args, stream);
}
