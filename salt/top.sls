{#- Each minion gets the states of its role: the role table (cluster/topology.py) and the
    hosts come from the pillar. #}
{%- set roles = salt['pillar.get']('sqlgate:roles', {}) %}
base:
{%- for name, host in salt['pillar.get']('sqlgate:hosts', {}) | dictsort %}
  '{{ name }}':
    - {{ roles[host.role].states }}
{%- endfor %}
