# coffer-balancer on an empty image: one statically linked binary, nothing else.
# Built by deploy/build-images.sh; the CA it checks servers against under /pki.
FROM scratch
COPY coffer-balancer /coffer-balancer
EXPOSE 7000 7001
ENTRYPOINT ["/coffer-balancer"]
