"""How a trained model is judged and used: the MNIST classifier that reads its digits, sampling and the
scores evaluate.py writes, and the ONNX export behind the web page."""
