# Graft: one image for the API (`graft api`) and the workers (`graft worker`); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/torch

RUN useradd --create-home --uid 1000 graft \
    && mkdir -p /data /var/lib/graft/artifacts /opt/torch/hub/checkpoints \
    && chown -R graft:graft /data /var/lib/graft /opt/torch

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY client ./client
# CPU-only torch wheels: the +cpu builds on the PyTorch index win over PyPI's CUDA builds of the same version.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && python -c "import torch; assert not torch.version.cuda, 'expected a CPU-only torch'"

# Bake the ResNet-18 ImageNet weights into the hub cache (hash-checked) so workers need no network;
# build with --build-arg FETCH_RESNET18=0 to skip (then set GRAFT_RESNET18_WEIGHTS or train with pretrained=false).
ARG FETCH_RESNET18=1
RUN if [ "$FETCH_RESNET18" = "1" ]; then \
        python -c "from graft.worker.core.backbones import resolve_resnet18_weights as r; print(r(None))" \
        && chown -R graft:graft /opt/torch; \
    fi

USER graft
EXPOSE 8000
# `graft api` serves with Hypercorn (cli/serve.py): the token is checked before a body is read. Compose puts nginx
# (deploy/nginx.conf) in front.
CMD ["graft", "api", "--host", "0.0.0.0", "--port", "8000"]
