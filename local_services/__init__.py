"""The local services that tests, benchmarks and ``make demo`` all run: etcd + kube-apiserver,
fake-gcs-server, the Pub/Sub emulator, Toxiproxy (built from their Go modules by
hack/build-test-binaries.sh), the kubelet and TF Serving stand-ins, the operator under its own
identity, and the model archives they upload. Never shipped (not in the wheel)."""
