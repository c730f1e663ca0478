// TensorRT plugin "DrganSpatialAttention" (version "1", namespace ""): the project's fused spatial
// attention inside an engine, through libdrgan_kernels' drgan_spatial_attention_fwd.
//
// A TensorRT 10 IPluginV3 with the IPluginV3OneCore / OneBuild / OneRuntime capabilities and an
// IPluginCreatorV3One, as the TensorRT plugin documentation lays them out. The library exports
// getCreators and setLoggerFinder, so IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, Python
// trt.get_plugin_registry().load_library) registers it. The ONNX parser builds it for nodes of op
// type DrganSpatialAttention (export/onnx_plugin.py), passing the node's `scale` attribute as a field.
//
// Inputs Q, K (..., N, Dqk) and V (..., N, Dv), all leading axes flattened into the batch; output
// (..., N, Dv). fp16 or bf16, linear (row-major) format; TensorRT inserts casts around it otherwise.
#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "drgan_kernel_constants.h"  // generated from kernels/spatial_attention_triton.py
#include "drgan_kernels.h"

#define DRGAN_PLUGIN_API extern "C" __attribute__((visibility("default")))

namespace {

using namespace nvinfer1;

constexpr char const* kName = "DrganSpatialAttention";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "";
constexpr int32_t kInputs = 3;

ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& message) noexcept {
    ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
    std::string const line = std::string(kName) + ": " + message;
    if (logger) {
        logger->log(ILogger::Severity::kERROR, line.c_str());
    } else {
        std::fprintf(stderr, "%s\n", line.c_str());
    }
}

// (batch, n, width) of a (..., n, width) tensor.
struct Shape3 {
    int64_t batch, n, width;
};

Shape3 flatten(Dims const& dims) {
    Shape3 shape{1, dims.d[dims.nbDims - 2], dims.d[dims.nbDims - 1]};
    for (int32_t i = 0; i < dims.nbDims - 2; ++i) shape.batch *= dims.d[i];
    return shape;
}

// Q, K, V ranks and sizes that the kernel takes; empty when they fit, else the reason.
std::string checkShapes(Dims const& q, Dims const& k, Dims const& v) {
    if (q.nbDims < 3 || k.nbDims != q.nbDims || v.nbDims != q.nbDims) return "Q, K, V must share one rank >= 3";
    for (int32_t i = 0; i < q.nbDims - 1; ++i) {
        if (k.d[i] != q.d[i] || v.d[i] != q.d[i]) return "Q, K, V must agree on every axis but the last";
    }
    if (k.d[q.nbDims - 1] != q.d[q.nbDims - 1]) return "Q and K must have one width";
    if (q.d[q.nbDims - 1] > DRGAN_SPATIAL_MAX_QK_DIM)
        return "the Q/K width exceeds " + std::to_string(DRGAN_SPATIAL_MAX_QK_DIM);
    return {};
}

class SpatialAttentionPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit SpatialAttentionPlugin(float scale) : mScale(scale) { initFields(); }

    SpatialAttentionPlugin(SpatialAttentionPlugin const& other) : mScale(other.mScale) { initFields(); }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        try {
            return new SpatialAttentionPlugin(*this);
        } catch (std::exception const& e) {
            logError(e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != 1) return -1;
        std::string const reason = checkShapes(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims);
        if (!reason.empty()) {
            logError(reason);
            return -1;
        }
        return out[0].desc.dims.nbDims == in[0].desc.dims.nbDims ? 0 : -1;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs != kInputs) return -1;
        outputTypes[0] = inputTypes[2];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        (void)shapeInputs;
        (void)nbShapeInputs;
        (void)exprBuilder;
        if (nbInputs != kInputs || nbOutputs != 1 || inputs[0].nbDims < 3 || inputs[2].nbDims != inputs[0].nbDims) return -1;
        outputs[0] = inputs[0];  // Q's shape with V's width
        outputs[0].d[inputs[0].nbDims - 1] = inputs[2].d[inputs[2].nbDims - 1];
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != 1 || pos < 0 || pos > kInputs) return false;
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return desc.type == DataType::kHALF || desc.type == DataType::kBF16;
        return desc.type == inOut[0].desc.type;  // one dtype for Q, K, V and the output
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override {
        (void)outputs;
        (void)nbOutputs;
        // Called before onShapeChange's check: a rank below 3 has no (N, D) axes to read.
        if (nbInputs != kInputs || inputs[0].max.nbDims < 3) return 0;
        Shape3 const most = flatten(inputs[0].max);
        return drgan_spatial_attention_workspace_size(most.batch, most.n);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
        (void)out;
        if (nbInputs != kInputs || nbOutputs != 1) return -1;
        std::string const reason = checkShapes(in[0].dims, in[1].dims, in[2].dims);
        if (!reason.empty()) logError(reason);
        return reason.empty() ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        (void)outputDesc;
        Shape3 const q = flatten(inputDesc[0].dims);
        Shape3 const v = flatten(inputDesc[2].dims);
        if (q.batch * q.n == 0) return 0;
        drgan_dtype const dtype = inputDesc[0].type == DataType::kBF16 ? DRGAN_BFLOAT16 : DRGAN_FLOAT16;
        // Linear format: contiguous (batch, n, width).
        int64_t const qkStrides[3] = {q.n * q.width, q.width, 1};
        int64_t const voStrides[3] = {v.n * v.width, v.width, 1};
        drgan_status const status = drgan_spatial_attention_fwd(
            inputs[0], qkStrides, inputs[1], qkStrides, inputs[2], voStrides, outputs[0], voStrides,
            q.batch, q.n, q.width, v.width, mScale, dtype,
            workspace, drgan_spatial_attention_workspace_size(q.batch, q.n), static_cast<drgan_stream>(stream));
        if (status != DRGAN_SUCCESS) {
            logError(std::string(drgan_status_string(status)) + ": " + drgan_last_error());
            return -1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override {
        (void)context;
        return clone();
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFieldCollection; }

private:
    void initFields() {
        mFields.clear();
        mFields.emplace_back("scale", &mScale, PluginFieldType::kFLOAT32, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    }

    float mScale;
    std::vector<PluginField> mFields;
    PluginFieldCollection mFieldCollection{};
};

class SpatialAttentionCreator : public IPluginCreatorV3One {
public:
    SpatialAttentionCreator() {
        mFields.emplace_back("scale", nullptr, PluginFieldType::kFLOAT32, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    }

    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }

    IPluginV3* createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept override {
        (void)name;
        (void)phase;
        try {
            float scale = 1.0f;
            for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
                PluginField const& field = fc->fields[i];
                if (std::strcmp(field.name, "scale") != 0 || !field.data || field.length < 1) continue;
                // The ONNX parser passes a FLOAT attribute as kFLOAT32; accept a double too.
                if (field.type == PluginFieldType::kFLOAT32) {
                    scale = *static_cast<float const*>(field.data);
                } else if (field.type == PluginFieldType::kFLOAT64) {
                    scale = static_cast<float>(*static_cast<double const*>(field.data));
                } else {
                    logError("field 'scale' must be kFLOAT32 or kFLOAT64");
                    return nullptr;
                }
            }
            if (!(scale > 0.0f)) {
                logError("scale " + std::to_string(scale) + " must be > 0");
                return nullptr;
            }
            return new SpatialAttentionPlugin(scale);
        } catch (std::exception const& e) {
            logError(e.what());
        }
        return nullptr;
    }

private:
    std::vector<PluginField> mFields;
    PluginFieldCollection mFieldCollection{};
};

}  // namespace

DRGAN_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { gLoggerFinder = finder; }

DRGAN_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static SpatialAttentionCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
