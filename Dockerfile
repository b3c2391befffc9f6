# Turnout: slim, non-root, with a health probe on the standard grpc.health.v1 service.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY clients/python clients/python
COPY proxy proxy
# The server's wheel holds the client's `turnout` package too (see pyproject.toml); its dependencies
# are built beside it, so the image installs from /wheels alone.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 turnout
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels turnout && rm -rf /wheels
COPY config /etc/turnout
RUN mkdir -p /data && chown turnout /data && \
    sed -i 's#\.\./data/#/data/#' /etc/turnout/turnout.yaml && \
    sed -i 's#\.\./\.\./data/#/data/#' /etc/turnout/examples/*.yaml && \
    sed -i 's#^listen: 127.0.0.1:#listen: 0.0.0.0:#' /etc/turnout/turnout.yaml /etc/turnout/examples/*.yaml
# Every other command (`docker exec ... turnout kv get k`, `turnout status`) finds the same config.
ENV TURNOUT_CONFIG=/etc/turnout/turnout.yaml
USER turnout
EXPOSE 50051
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:50051');sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=2).status==h.HealthCheckResponse.SERVING else 1)"
ENTRYPOINT ["turnout"]
CMD ["serve", "--config", "/etc/turnout/turnout.yaml"]
