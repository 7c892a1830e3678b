# twincast on an NVIDIA GPU: TensorRT, CUDA and cuDNN come with the base image.
FROM nvcr.io/nvidia/tensorrt:25.03-py3

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ffmpeg fonts-dejavu-core libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/twincast
COPY pyproject.toml README.md constraints.txt ./
COPY twincast ./twincast
COPY avatar ./avatar
COPY model ./model
COPY export ./export
COPY engines ./engines
COPY stream ./stream
COPY assets ./assets
# The CUDA build of torch comes from the PyTorch index; everything else is pinned like CI, minus the CPU torch.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints-gpu.txt \
 && pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
 && pip install -c /tmp/constraints-gpu.txt -e '.[gpu]'

EXPOSE 8080
CMD ["twincast", "demo", "--host", "0.0.0.0", "--port", "8080"]
