/* AdaIN forward: the reduction and affine kernels of kernels/adain_triton.py over the same tiles,
 * H*W split into chunks as adain_triton.splits_for does. */
#include "runtime.h"

/* (splits, chunk) for a tile of block_c channels x block_hw positions. */
static void splits_for(int64_t batch, int64_t channels, int64_t positions, int64_t block_c, int64_t block_hw,
                       int64_t* splits, int64_t* chunk) {
    int64_t programs = batch * drgan_cdiv(channels, block_c);
    int64_t want = drgan_cdiv(DRGAN_ADAIN_TARGET_PROGRAMS, programs), most = drgan_cdiv(positions, 4 * block_hw);
    int64_t s = want < most ? want : most;
    if (s < 1) s = 1;
    *chunk = drgan_cdiv(drgan_cdiv(positions, s), block_hw) * block_hw;
    *splits = drgan_cdiv(positions, *chunk);
}

DRGAN_API size_t drgan_adain_workspace_size(int64_t batch, int64_t channels, int64_t height, int64_t width) {
    if (batch < 1 || channels < 1 || height < 1 || width < 1) return 0;
    int64_t most = 1;
    /* Enough for whichever tile the call's layout selects. */
    for (int i = 0; i < drgan_image_count; ++i) {
        const drgan_image* image = &drgan_images[i];
        if (image->kernel != DRGAN_K_ADAIN_FORWARD) continue;
        int64_t splits, chunk;
        splits_for(batch, channels, height * width, drgan_const(image, ADAIN_FORWARD_BLOCK_C),
                   drgan_const(image, ADAIN_FORWARD_BLOCK_HW), &splits, &chunk);
        if (splits > most) most = splits;
    }
    size_t stats = (size_t)batch * (size_t)channels * sizeof(float);
    return drgan_round_up(stats * 2 * (size_t)most) + 2 * drgan_round_up(stats);
}

DRGAN_API drgan_status drgan_adain_fwd(
    const void* x, const void* gamma, const void* beta, void* y, const int64_t strides[4],
    int64_t batch, int64_t channels, int64_t height, int64_t width,
    float eps, drgan_dtype dtype, void* workspace, size_t workspace_size, drgan_stream stream) {
    if (dtype != DRGAN_FLOAT16 && dtype != DRGAN_BFLOAT16)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: dtype %d is not DRGAN_FLOAT16 or DRGAN_BFLOAT16", dtype);
    if (!x || !gamma || !beta || !y || !strides)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: x, gamma, beta, y or strides is NULL");
    if (batch < 1 || channels < 1 || height < 1 || width < 1)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: shape (%lld, %lld, %lld, %lld) has an empty axis",
                          (long long)batch, (long long)channels, (long long)height, (long long)width);
    if (!(eps >= 0.0f))
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: eps %g must be >= 0", (double)eps);
    /* H and W merge into one position axis (as adain_triton.flat_strides requires). */
    if (height > 1 && width > 1 && strides[2] != width * strides[3])
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: strides (%lld, %lld, %lld, %lld) do not merge H and W (use contiguous or channels_last)",
                          (long long)strides[0], (long long)strides[1], (long long)strides[2], (long long)strides[3]);
    int64_t hw = height * width;
    int64_t flat[3] = {strides[0], strides[1], width > 1 ? strides[3] : strides[2]};
    if (flat[1] < 0 || flat[2] < 0 || (channels - 1) * flat[1] + (hw - 1) * flat[2] > INT32_MAX || batch * channels > INT32_MAX)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "adain: a sample spans more than 2^31 elements");
    size_t needed = drgan_adain_workspace_size(batch, channels, height, width);
    if (workspace_size < needed || !workspace)
        return drgan_fail(DRGAN_ERROR_WORKSPACE, "adain: workspace of %zu B, needs %zu B", workspace_size, needed);

    size_t stats = (size_t)batch * (size_t)channels * sizeof(float);
    uint64_t rstd = (uint64_t)(uintptr_t)workspace;
    uint64_t mean = rstd + drgan_round_up(stats);
    uint64_t part = mean + drgan_round_up(stats);

    drgan_arg fwd[ADAIN_FORWARD_NARGS] = {0};
    fwd[ADAIN_FORWARD_X].ptr = (uint64_t)(uintptr_t)x;
    fwd[ADAIN_FORWARD_GAMMA].ptr = (uint64_t)(uintptr_t)gamma;
    fwd[ADAIN_FORWARD_BETA].ptr = (uint64_t)(uintptr_t)beta;
    fwd[ADAIN_FORWARD_Y].ptr = (uint64_t)(uintptr_t)y;
    fwd[ADAIN_FORWARD_PART].ptr = part;
    fwd[ADAIN_FORWARD_MEAN].ptr = mean;
    fwd[ADAIN_FORWARD_RSTD].ptr = rstd;
    drgan_status status = DRGAN_SUCCESS;
    for (int axis = 0; axis < 3 && status == DRGAN_SUCCESS; ++axis) {
        status = drgan_set_i32(fwd, ADAIN_FORWARD_STRIDE_XB + axis, flat[axis], "x stride");
        fwd[ADAIN_FORWARD_STRIDE_YB + axis] = fwd[ADAIN_FORWARD_STRIDE_XB + axis];
    }
    if (status != DRGAN_SUCCESS) return status;
    fwd[ADAIN_FORWARD_C].i32 = (int32_t)channels;
    fwd[ADAIN_FORWARD_HW].i32 = (int32_t)hw;
    fwd[ADAIN_FORWARD_EPS].f32 = eps;

    /* The affine kernel is chosen first (it reads the most tensors); the reduction takes the same
     * layout, hence the same tile and split, and its conditions are a subset of the affine's. */
    const drgan_image *forward, *reduce;
    status = drgan_select(DRGAN_K_ADAIN_FORWARD, dtype, 0, -1, fwd, &forward);
    if (status != DRGAN_SUCCESS) return status;
    int64_t block_c = drgan_const(forward, ADAIN_FORWARD_BLOCK_C), block_hw = drgan_const(forward, ADAIN_FORWARD_BLOCK_HW);
    int64_t splits, chunk;
    splits_for(batch, channels, hw, block_c, block_hw, &splits, &chunk);
    fwd[ADAIN_FORWARD_CHUNK].i32 = (int32_t)chunk;
    fwd[ADAIN_FORWARD_SPLITS].i32 = (int32_t)splits;

    drgan_arg red[ADAIN_REDUCE_NARGS] = {0};
    red[ADAIN_REDUCE_X].ptr = red[ADAIN_REDUCE_DY].ptr = (uint64_t)(uintptr_t)x; /* DY and the stats: unused forward */
    red[ADAIN_REDUCE_SHIFT_OR_MEAN].ptr = red[ADAIN_REDUCE_RSTD].ptr = (uint64_t)(uintptr_t)x;
    red[ADAIN_REDUCE_PART].ptr = part;
    for (int axis = 0; axis < 3; ++axis) red[ADAIN_REDUCE_STRIDE_XB + axis].i32 = (int32_t)flat[axis];
    red[ADAIN_REDUCE_C].i32 = (int32_t)channels;
    red[ADAIN_REDUCE_HW].i32 = (int32_t)hw;
    red[ADAIN_REDUCE_CHUNK].i32 = (int32_t)chunk;
    red[ADAIN_REDUCE_SPLITS].i32 = (int32_t)splits;
    status = drgan_select(DRGAN_K_ADAIN_REDUCE, dtype, 0, forward->layout, red, &reduce);
    if (status != DRGAN_SUCCESS) return status;

    int64_t grid_x = batch * drgan_cdiv(channels, block_c);
    status = drgan_launch(reduce, grid_x, splits, 1, red, stream);
    return status == DRGAN_SUCCESS ? drgan_launch(forward, grid_x, splits, 1, fwd, stream) : status;
}
