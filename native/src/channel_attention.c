/* Channel attention forward: the Gram and apply kernels of kernels/channel_attention_triton.py, with
 * the Gram matrix split over N (summed by a small kernel) as channel_attention_triton.gram_splits does. */
#include "runtime.h"

/* The Gram kernel's tile sizes, the same in every image. */
static const drgan_image* any_gram(void) {
    for (int i = 0; i < drgan_image_count; ++i)
        if (drgan_images[i].kernel == DRGAN_K_CHANNEL_GRAM) return &drgan_images[i];
    return NULL;
}

/* (splits, chunk): N cut into chunks (multiples of BLOCK_K) so the Gram grid has enough programs. */
static void gram_splits(int64_t batch, int64_t channels, int64_t n, int64_t* splits, int64_t* chunk) {
    const drgan_image* gram = any_gram();
    int64_t block_m = drgan_const(gram, CHANNEL_GRAM_BLOCK_M), block_k = drgan_const(gram, CHANNEL_GRAM_BLOCK_K);
    int64_t tiles = drgan_cdiv(channels, block_m) * drgan_cdiv(channels, block_m) * batch;
    int64_t want = drgan_cdiv(DRGAN_CHANNEL_TARGET_PROGRAMS, tiles), most = drgan_cdiv(n, 8 * block_k);
    int64_t s = want < most ? want : most;
    if (s < 1) s = 1;
    *chunk = drgan_cdiv(drgan_cdiv(n, s), block_k) * block_k;
    *splits = drgan_cdiv(n, *chunk);
}

DRGAN_API size_t drgan_channel_attention_workspace_size(int64_t batch, int64_t channels, int64_t n) {
    if (batch < 1 || channels < 1 || n < 1) return 0;
    int64_t splits, chunk;
    gram_splits(batch, channels, n, &splits, &chunk);
    size_t energy = (size_t)batch * (size_t)channels * (size_t)channels * sizeof(float);
    return drgan_round_up(energy * (size_t)splits) + (splits > 1 ? drgan_round_up(energy) : 0);
}

DRGAN_API drgan_status drgan_channel_attention_fwd(
    const void* x, void* out, const int64_t strides[3],
    int64_t batch, int64_t channels, int64_t n,
    drgan_dtype dtype, void* workspace, size_t workspace_size, drgan_stream stream) {
    if (dtype != DRGAN_FLOAT16 && dtype != DRGAN_BFLOAT16)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "channel attention: dtype %d is not DRGAN_FLOAT16 or DRGAN_BFLOAT16", dtype);
    if (!x || !out || !strides)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "channel attention: x, out or strides is NULL");
    if (batch < 1 || channels < 1 || n < 1)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "channel attention: batch %lld, channels %lld, n %lld must be >= 1",
                          (long long)batch, (long long)channels, (long long)n);
    if (batch > 65535)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "channel attention: batch %lld exceeds the grid limit 65535", (long long)batch);
    if (strides[1] < 0 || strides[2] < 0 || (channels - 1) * strides[1] + (n - 1) * strides[2] > INT32_MAX ||
        batch * channels * channels > INT32_MAX)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "channel attention: strides (%lld, %lld) or channels %lld exceed 32-bit offsets per sample",
                          (long long)strides[1], (long long)strides[2], (long long)channels);
    size_t needed = drgan_channel_attention_workspace_size(batch, channels, n);
    if (workspace_size < needed || !workspace)
        return drgan_fail(DRGAN_ERROR_WORKSPACE, "channel attention: workspace of %zu B, needs %zu B", workspace_size, needed);

    int64_t splits, chunk;
    gram_splits(batch, channels, n, &splits, &chunk);
    size_t energy_bytes = (size_t)batch * (size_t)channels * (size_t)channels * sizeof(float);
    uint64_t parts = (uint64_t)(uintptr_t)workspace;
    uint64_t energy = splits > 1 ? parts + drgan_round_up(energy_bytes * (size_t)splits) : parts;

    drgan_arg gram_args[CHANNEL_GRAM_NARGS] = {0};
    gram_args[CHANNEL_GRAM_X].ptr = (uint64_t)(uintptr_t)x;
    gram_args[CHANNEL_GRAM_E_PART].ptr = parts;
    drgan_status status = DRGAN_SUCCESS;
    for (int axis = 0; axis < 3 && status == DRGAN_SUCCESS; ++axis)
        status = drgan_set_i32(gram_args, CHANNEL_GRAM_STRIDE_XB + axis, strides[axis], "x stride");
    if (status != DRGAN_SUCCESS) return status;
    gram_args[CHANNEL_GRAM_B].i32 = (int32_t)batch;
    gram_args[CHANNEL_GRAM_C].i32 = (int32_t)channels;
    gram_args[CHANNEL_GRAM_N].i32 = (int32_t)n;
    gram_args[CHANNEL_GRAM_CHUNK].i32 = (int32_t)chunk;

    const drgan_image* gram;
    status = drgan_select(DRGAN_K_CHANNEL_GRAM, dtype, 0, -1, gram_args, &gram);
    if (status != DRGAN_SUCCESS) return status;
    int64_t tiles = drgan_cdiv(channels, drgan_const(gram, CHANNEL_GRAM_BLOCK_M));
    status = drgan_launch(gram, tiles * tiles, splits, batch, gram_args, stream);
    if (status != DRGAN_SUCCESS) return status;

    if (splits > 1) {
        drgan_arg sum_args[CHANNEL_SUM_NARGS] = {0};
        int64_t count = batch * channels * channels;
        sum_args[CHANNEL_SUM_PART].ptr = parts;
        sum_args[CHANNEL_SUM_OUT].ptr = energy;
        sum_args[CHANNEL_SUM_COUNT].i32 = (int32_t)count;
        sum_args[CHANNEL_SUM_SPLITS].i32 = (int32_t)splits;
        const drgan_image* sum;
        status = drgan_select(DRGAN_K_CHANNEL_SUM, DRGAN_FLOAT32, 0, -1, sum_args, &sum);
        if (status == DRGAN_SUCCESS)
            status = drgan_launch(sum, drgan_cdiv(count, drgan_const(sum, CHANNEL_SUM_BLOCK)), 1, 1, sum_args, stream);
        if (status != DRGAN_SUCCESS) return status;
    }

    drgan_arg apply_args[CHANNEL_APPLY_NARGS] = {0};
    apply_args[CHANNEL_APPLY_X].ptr = (uint64_t)(uintptr_t)x;
    apply_args[CHANNEL_APPLY_E].ptr = energy;
    apply_args[CHANNEL_APPLY_OUT].ptr = (uint64_t)(uintptr_t)out;
    for (int axis = 0; axis < 3; ++axis) {
        apply_args[CHANNEL_APPLY_STRIDE_XB + axis].i32 = (int32_t)strides[axis];
        apply_args[CHANNEL_APPLY_STRIDE_OB + axis].i32 = (int32_t)strides[axis];
    }
    apply_args[CHANNEL_APPLY_C].i32 = (int32_t)channels;
    apply_args[CHANNEL_APPLY_N].i32 = (int32_t)n;
    const drgan_image* apply;
    status = drgan_select(DRGAN_K_CHANNEL_APPLY, dtype, 0, -1, apply_args, &apply);
    if (status != DRGAN_SUCCESS) return status;
    int64_t grid_c = drgan_cdiv(channels, drgan_const(apply, CHANNEL_APPLY_BLOCK_M));
    int64_t grid_n = drgan_cdiv(n, drgan_const(apply, CHANNEL_APPLY_BLOCK_N));
    return drgan_launch(apply, grid_c, grid_n, batch, apply_args, stream);
}
