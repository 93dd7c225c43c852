{#- Each minion gets the states of its role; minion ids and roles come from the pillar. #}
{%- set role_states = {'manager': 'sqlgate.db.primary', 'worker': 'sqlgate.db.replica',
                       'proxy': 'sqlgate.proxy', 'gatekeeper': 'sqlgate.gatekeeper'} %}
base:
{%- for name, host in salt['pillar.get']('sqlgate:hosts', {}) | dictsort %}
  '{{ name }}':
    - {{ role_states[host.role] }}
{%- endfor %}
