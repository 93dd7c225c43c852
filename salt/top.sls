{#- Each minion gets the states of its role: the role table (cluster/topology.py) and the
    hosts come from the pillar. When the cluster has a monitor host, every minion also runs the
    exporters it scrapes (sqlgate.exporters: node_exporter, and mysqld_exporter on the
    database hosts). #}
{%- set roles = salt['pillar.get']('sqlgate:roles', {}) %}
{%- set hosts = salt['pillar.get']('sqlgate:hosts', {}) %}
{%- set monitored = hosts.values() | selectattr('role', 'equalto', 'monitor') | list %}
base:
{%- for name, host in hosts | dictsort %}
  '{{ name }}':
    - {{ roles[host.role].states }}
{%-   if monitored %}
    - sqlgate.exporters
{%-   endif %}
{%- endfor %}
