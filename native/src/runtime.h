/* Internal: the image table written by gen_kernels.py, and selecting, loading and launching its images. */
#ifndef DRGAN_RUNTIME_H
#define DRGAN_RUNTIME_H

#include <stdint.h>

#include "drgan_kernel_constants.h"
#include "drgan_kernel_table.h"
#include "drgan_kernels.h"

#define DRGAN_RUNTIME (-2147483647 - 1) /* consts[]: the argument is passed at launch */
#define DRGAN_PTX_ARCH 0                 /* arch of a PTX image */
#define DRGAN_FLOAT32 2                  /* dtype of the fp32-only helper kernels */
#define DRGAN_MAX_ARGS 64

/* One compiled kernel image. Arguments are indexed in the Triton signature's order. */
typedef struct {
    int kernel;                   /* enum drgan_kernel */
    int dtype;                    /* drgan_dtype, or DRGAN_FLOAT32 */
    int layout;                   /* <KERNEL>_LAYOUT_*: specialized layouts first, generic last */
    int key;                      /* spatial attention: BLOCK_D; else 0 */
    int arch;                     /* 80, 90 (cubin) or DRGAN_PTX_ARCH */
    const char* function;         /* kernel symbol in the image */
    const char* variant;          /* readable name */
    uint32_t offset, size;        /* image bytes in drgan_kernel_blob */
    int num_warps;
    int shared;                   /* dynamic shared memory, bytes */
    int num_params;
    const unsigned char* params;  /* argument index of each kernel parameter, in order */
    const unsigned char* kinds;   /* per argument: 0 pointer, 1 int32, 2 float32 */
    const int* consts;            /* per argument: its compiled-in value, or DRGAN_RUNTIME */
    uint64_t unit_mask;           /* arguments the call must pass as 1 */
    uint64_t aligned_mask;        /* arguments the call must pass 16-aligned (pointers: bytes) */
} drgan_image;

extern const drgan_image drgan_images[];
extern const int drgan_image_count;

typedef union {
    uint64_t ptr;
    int32_t i32;
    float f32;
} drgan_arg;

/* Record a one-line failure description for drgan_last_error() and return `status`. */
drgan_status drgan_fail(drgan_status status, const char* format, ...) __attribute__((format(printf, 2, 3)));

/* Store an int64 in an int32 argument; fails with DRGAN_ERROR_INVALID_VALUE when it does not fit. */
drgan_status drgan_set_i32(drgan_arg* args, int index, int64_t value, const char* what);

/* The first image of `kernel` for (dtype, key) whose layout conditions `args` meet and that runs
 * on the current device; layout >= 0 restricts the search to that layout. */
drgan_status drgan_select(int kernel, int dtype, int key, int layout, const drgan_arg* args, const drgan_image** out);

/* The compiled-in value of a constexpr argument of `image`. */
int drgan_const(const drgan_image* image, int arg);

/* Launch `image` with 32 * num_warps threads per block on `stream`. */
drgan_status drgan_launch(const drgan_image* image, int64_t grid_x, int64_t grid_y, int64_t grid_z,
                          drgan_arg* args, drgan_stream stream);

/* Workspace carving: round each buffer up so the next one stays 256-byte aligned. */
static inline size_t drgan_round_up(size_t bytes) { return (bytes + 255u) & ~(size_t)255u; }
static inline int64_t drgan_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif /* DRGAN_RUNTIME_H */
