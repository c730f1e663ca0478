/* The CUDA driver, loaded with dlopen so the library links and loads on machines without a GPU;
 * image selection, loading (once per image and context) and launching. */
#include "runtime.h"

#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_CONTEXTS 16 /* contexts an image is loaded into at once (one per GPU in practice) */

extern const unsigned char drgan_kernel_blob[];

static _Thread_local char last_error[512];

drgan_status drgan_fail(drgan_status status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return status;
}

DRGAN_API const char* drgan_last_error(void) { return last_error; }

DRGAN_API const char* drgan_status_string(drgan_status status) {
    switch (status) {
    case DRGAN_SUCCESS: return "DRGAN_SUCCESS";
    case DRGAN_ERROR_INVALID_VALUE: return "DRGAN_ERROR_INVALID_VALUE";
    case DRGAN_ERROR_UNSUPPORTED: return "DRGAN_ERROR_UNSUPPORTED";
    case DRGAN_ERROR_WORKSPACE: return "DRGAN_ERROR_WORKSPACE";
    case DRGAN_ERROR_NO_DRIVER: return "DRGAN_ERROR_NO_DRIVER";
    case DRGAN_ERROR_NO_CONTEXT: return "DRGAN_ERROR_NO_CONTEXT";
    case DRGAN_ERROR_DEVICE: return "DRGAN_ERROR_DEVICE";
    case DRGAN_ERROR_CUDA: return "DRGAN_ERROR_CUDA";
    }
    return "DRGAN_ERROR_UNKNOWN";
}

/* The driver entry points used, by their exported (unversioned) names. */
static struct {
    CUresult (*init)(unsigned int);
    CUresult (*get_error_name)(CUresult, const char**);
    CUresult (*ctx_get_current)(CUcontext*);
    CUresult (*ctx_get_device)(CUdevice*);
    CUresult (*device_get_attribute)(int*, CUdevice_attribute, CUdevice);
    CUresult (*module_load_data)(CUmodule*, const void*);
    CUresult (*module_get_function)(CUfunction*, CUmodule, const char*);
    CUresult (*func_set_attribute)(CUfunction, CUfunction_attribute, int);
    CUresult (*launch_kernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              CUstream, void**, void**);
} cu;
static drgan_status driver_status = DRGAN_ERROR_NO_DRIVER;
static char driver_error[256];
static pthread_once_t driver_once = PTHREAD_ONCE_INIT;

static void load_driver(void) {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(driver_error, sizeof driver_error, "libcuda.so.1 could not be loaded: %s", dlerror());
        return;
    }
    struct { void** slot; const char* name; } symbols[] = {
        {(void**)&cu.init, "cuInit"},
        {(void**)&cu.get_error_name, "cuGetErrorName"},
        {(void**)&cu.ctx_get_current, "cuCtxGetCurrent"},
        {(void**)&cu.ctx_get_device, "cuCtxGetDevice"},
        {(void**)&cu.device_get_attribute, "cuDeviceGetAttribute"},
        {(void**)&cu.module_load_data, "cuModuleLoadData"},
        {(void**)&cu.module_get_function, "cuModuleGetFunction"},
        {(void**)&cu.func_set_attribute, "cuFuncSetAttribute"},
        {(void**)&cu.launch_kernel, "cuLaunchKernel"},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; ++i) {
        *symbols[i].slot = dlsym(lib, symbols[i].name);
        if (!*symbols[i].slot) {
            snprintf(driver_error, sizeof driver_error, "libcuda.so.1 lacks %s (driver too old)", symbols[i].name);
            return;
        }
    }
    CUresult rc = cu.init(0);
    if (rc != CUDA_SUCCESS) {
        const char* name = "?";
        cu.get_error_name(rc, &name);
        snprintf(driver_error, sizeof driver_error, "cuInit failed: %s", name);
        driver_status = DRGAN_ERROR_CUDA;
        return;
    }
    driver_status = DRGAN_SUCCESS;
}

static drgan_status cuda_fail(CUresult rc, const char* call, const drgan_image* image) {
    const char* name = "?";
    cu.get_error_name(rc, &name);
    return drgan_fail(DRGAN_ERROR_CUDA, "%s(%s): %s", call, image ? image->variant : "", name);
}

/* Per image: the function loaded in each context it ran in. */
typedef struct {
    CUcontext context;
    CUfunction function;
} loaded_function;
static loaded_function (*loaded)[MAX_CONTEXTS];
static pthread_mutex_t loaded_lock = PTHREAD_MUTEX_INITIALIZER;

static drgan_status get_function(const drgan_image* image, CUcontext context, CUfunction* out) {
    loaded_function* slots = loaded[image - drgan_images];
    drgan_status status = DRGAN_SUCCESS;
    pthread_mutex_lock(&loaded_lock);
    int i = 0;
    while (i < MAX_CONTEXTS && slots[i].context && slots[i].context != context) ++i;
    if (i == MAX_CONTEXTS) {
        status = drgan_fail(DRGAN_ERROR_CUDA, "%s: loaded in %d CUDA contexts already", image->variant, MAX_CONTEXTS);
    } else if (slots[i].context == context) {
        *out = slots[i].function;
    } else {
        CUmodule module;
        const char* call = "cuModuleLoadData";
        CUresult rc = cu.module_load_data(&module, drgan_kernel_blob + image->offset);
        if (rc == CUDA_SUCCESS) {
            call = "cuModuleGetFunction";
            rc = cu.module_get_function(out, module, image->function);
        }
        if (rc == CUDA_SUCCESS && image->shared > 48 * 1024) {
            call = "cuFuncSetAttribute";
            rc = cu.func_set_attribute(*out, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, image->shared);
        }
        if (rc == CUDA_SUCCESS) {
            slots[i].context = context;
            slots[i].function = *out;
        } else {
            status = cuda_fail(rc, call, image);
        }
    }
    pthread_mutex_unlock(&loaded_lock);
    return status;
}

static void allocate_loaded(void) { loaded = calloc((size_t)drgan_image_count, sizeof *loaded); }

/* Driver loaded, a context current, the device's capability and shared memory limit. */
static drgan_status current_device(CUcontext* context, int* capability, int* max_shared) {
    static pthread_once_t loaded_once = PTHREAD_ONCE_INIT;
    pthread_once(&driver_once, load_driver);
    if (driver_status != DRGAN_SUCCESS) return drgan_fail(driver_status, "%s", driver_error);
    pthread_once(&loaded_once, allocate_loaded);
    if (!loaded) return drgan_fail(DRGAN_ERROR_CUDA, "out of host memory");
    CUresult rc = cu.ctx_get_current(context);
    if (rc != CUDA_SUCCESS) return cuda_fail(rc, "cuCtxGetCurrent", NULL);
    if (!*context) return drgan_fail(DRGAN_ERROR_NO_CONTEXT, "no CUDA context is current on this thread");
    CUdevice device = 0;
    int major = 0, minor = 0;
    rc = cu.ctx_get_device(&device);
    if (rc == CUDA_SUCCESS) rc = cu.device_get_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
    if (rc == CUDA_SUCCESS) rc = cu.device_get_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
    if (rc == CUDA_SUCCESS) rc = cu.device_get_attribute(max_shared, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device);
    if (rc != CUDA_SUCCESS) return cuda_fail(rc, "cuDeviceGetAttribute", NULL);
    *capability = major * 10 + minor;
    return DRGAN_SUCCESS;
}

/* A cubin runs on its own major version from its minor up; PTX on anything from sm_80 up. */
static int runs_on(const drgan_image* image, int capability, int max_shared) {
    if (image->shared > max_shared) return 0;
    if (image->arch == DRGAN_PTX_ARCH) return capability >= 80;
    return image->arch / 10 == capability / 10 && image->arch <= capability;
}

static int meets_layout(const drgan_image* image, const drgan_arg* args) {
    for (int a = 0; a < DRGAN_MAX_ARGS; ++a) {
        uint64_t bit = 1ull << a;
        if ((image->unit_mask & bit) && args[a].i32 != 1) return 0;
        if (image->aligned_mask & bit) {
            uint64_t value = image->kinds[a] == 0 ? args[a].ptr : (uint64_t)(uint32_t)args[a].i32;
            if (value % 16) return 0;
        }
    }
    return 1;
}

drgan_status drgan_select(int kernel, int dtype, int key, int layout, const drgan_arg* args, const drgan_image** out) {
    CUcontext context = NULL;
    int capability = 0, max_shared = 0;
    drgan_status status = current_device(&context, &capability, &max_shared);
    if (status != DRGAN_SUCCESS) return status;
    int compiled = 0;
    for (int i = 0; i < drgan_image_count; ++i) {
        const drgan_image* image = &drgan_images[i];
        if (image->kernel != kernel || image->dtype != dtype || image->key != key) continue;
        if (layout >= 0 && image->layout != layout) continue;
        compiled = 1;
        if (meets_layout(image, args) && runs_on(image, capability, max_shared)) {
            *out = image;
            return DRGAN_SUCCESS;
        }
    }
    if (!compiled)
        return drgan_fail(DRGAN_ERROR_UNSUPPORTED, "no kernel compiled for kernel %d, dtype %d, key %d", kernel, dtype, key);
    return drgan_fail(DRGAN_ERROR_DEVICE, "no kernel image runs on this GPU (sm_%d, %d B shared memory per block)",
                      capability, max_shared);
}

int drgan_const(const drgan_image* image, int arg) { return image->consts[arg]; }

drgan_status drgan_set_i32(drgan_arg* args, int index, int64_t value, const char* what) {
    if (value < INT32_MIN || value > INT32_MAX)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "%s = %lld does not fit the kernels' 32-bit index arithmetic",
                          what, (long long)value);
    args[index].i32 = (int32_t)value;
    return DRGAN_SUCCESS;
}

drgan_status drgan_launch(const drgan_image* image, int64_t grid_x, int64_t grid_y, int64_t grid_z,
                          drgan_arg* args, drgan_stream stream) {
    if (grid_x * grid_y * grid_z == 0) return DRGAN_SUCCESS;
    if (grid_x > INT32_MAX || grid_y > 65535 || grid_z > 65535)
        return drgan_fail(DRGAN_ERROR_INVALID_VALUE, "%s: grid (%lld, %lld, %lld) exceeds the CUDA limits", image->variant,
                          (long long)grid_x, (long long)grid_y, (long long)grid_z);
    CUcontext context;
    CUresult rc = cu.ctx_get_current(&context);
    if (rc != CUDA_SUCCESS) return cuda_fail(rc, "cuCtxGetCurrent", image);
    CUfunction function;
    drgan_status status = get_function(image, context, &function);
    if (status != DRGAN_SUCCESS) return status;
    /* Triton kernels end with two scratch pointers; the images here need none (gen_kernels checks). */
    uint64_t scratch[2] = {0, 0};
    void* params[DRGAN_MAX_ARGS + 2];
    int count = 0;
    for (int p = 0; p < image->num_params; ++p) params[count++] = &args[image->params[p]];
    params[count++] = &scratch[0];
    params[count++] = &scratch[1];
    rc = cu.launch_kernel(function, (unsigned)grid_x, (unsigned)grid_y, (unsigned)grid_z, 32u * (unsigned)image->num_warps,
                          1, 1, (unsigned)image->shared, (CUstream)stream, params, NULL);
    return rc == CUDA_SUCCESS ? DRGAN_SUCCESS : cuda_fail(rc, "cuLaunchKernel", image);
}
