# Hindsight: build against the libtorch that ships in the PyTorch wheel (CPU), run slim.
#   docker build -t hindsight .
#   docker run -p 8080:8080 -e HINDSIGHT_API_KEY=change-me -v hindsight-data:/data hindsight
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir \
      --index-url https://download.pytorch.org/whl/cpu torch
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/torch/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --bin hindsight \
 && mkdir -p /out/lib \
 && cp target/release/hindsight /out/ \
 && cp -L /opt/torch/lib/python3*/site-packages/torch/lib/*.so* /out/lib/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* && useradd --system --home /data hindsight
COPY --from=build /out/hindsight /usr/local/bin/hindsight
COPY --from=build /out/lib /usr/local/lib/hindsight
ENV LD_LIBRARY_PATH=/usr/local/lib/hindsight \
    HINDSIGHT_BIND=0.0.0.0:8080 \
    HINDSIGHT_DATA_DIR=/data \
    RUST_LOG=info
USER hindsight
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["hindsight", "serve"]
