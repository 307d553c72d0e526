// Stand-in libnvinfer.so.10 for building and loading the plugin where TensorRT itself is not
// installed: only the two symbols the plugin imports. Never used to run an engine.
#include <NvInferRuntime.h>

#include <cstdio>

namespace
{
struct StderrLogger : nvinfer1::ILogger
{
    void log(Severity severity, char const* message) noexcept override
    {
        std::fprintf(stderr, "[stub nvinfer %d] %s\n", static_cast<int>(severity), message);
    }
} gLogger;
}  // namespace

extern "C" nvinfer1::ILogger* getLogger() noexcept
{
    return &gLogger;
}

extern "C" nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return nullptr;  // the autoreg library is built against this but never loaded here
}
