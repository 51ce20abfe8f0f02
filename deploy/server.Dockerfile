# coffer-server on an empty image: one statically linked binary, nothing else.
# Built by deploy/build-images.sh; data under /data, certificates under /pki.
FROM scratch
COPY coffer-server /coffer-server
EXPOSE 8000
ENTRYPOINT ["/coffer-server"]
