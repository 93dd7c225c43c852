# The exporters Prometheus scrapes on every minion of a monitored cluster: node_exporter, and
# mysqld_exporter on the database hosts.
include:
  - .node
  - .mysqld
