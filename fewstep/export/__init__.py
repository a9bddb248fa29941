"""Exporters (ONNX, OpenVINO, CoreML, TensorRT, Torch-TensorRT) behind one registry, int8 calibration from the
student's own sampler, parity and speed gates, the engine bundle writer and the Triton model repository.
`BundleExport(checkpoint, out, ExportConfig(...)).run()` is what `fewstep export` calls."""
