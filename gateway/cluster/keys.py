"""The cluster's keys in etcd, all under /gateway/ (what each holds: node.py's docstring)."""

ROOT = "/gateway/"
NODES = ROOT + "nodes/"
LEADER = ROOT + "leader"
PLACEMENT = ROOT + "placement/"
ENDPOINTS = ROOT + "endpoints/"
REPLICAS = ROOT + "replicas/"
MOVES = ROOT + "moves/"
