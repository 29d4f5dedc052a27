"""Running and deploying detectors: ``run`` (fit, score, write, evaluate), model files with calibrated
thresholds, ``predict`` on new parts, ONNX export, latency."""
