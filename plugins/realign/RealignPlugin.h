// TensorRT IPluginV3 for `scr.Realign` v1 (SCR_SPEC section 2) over the fused kernel in
// realign_kernel.cu. Registered as name "Realign", version "1", namespace "scr": the
// names the ONNX parser looks up from the node's op type and its plugin_version /
// plugin_namespace attributes. One field, `kappa` (kFLOAT32).
#ifndef SCR_REALIGN_PLUGIN_H
#define SCR_REALIGN_PLUGIN_H

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace scr
{

constexpr char const* kREALIGN_NAME{"Realign"};
constexpr char const* kREALIGN_VERSION{"1"};
constexpr char const* kREALIGN_NAMESPACE{"scr"};

class RealignPlugin final : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    static constexpr int32_t kNB_INPUTS{8};   // h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g
    static constexpr int32_t kNB_OUTPUTS{3};  // m, num_out, den_out

    explicit RealignPlugin(float kappa);
    ~RealignPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
        int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    float kappa() const noexcept { return mKappa; }

private:
    // Log an error (and report it to the execution context's error recorder once attached).
    void reportError(std::string const& message) const noexcept;
    // 0 for no problem (""); else the problem reported as above and -1, TensorRT's failure.
    int32_t failIf(std::string const& problem) const noexcept;

    float mKappa;
    nvinfer1::IErrorRecorder* mRecorder{nullptr};
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class RealignPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    RealignPluginCreator();
    ~RealignPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

}  // namespace scr

#endif  // SCR_REALIGN_PLUGIN_H
