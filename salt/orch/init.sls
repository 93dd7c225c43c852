{#- The whole cluster, one role after the other in the role table's order (cluster/topology.py,
    carried by the pillar): the primary, then the replicas (which read the primary's address
    from the mine), then the Proxy, then the Gatekeeper. The mine is refreshed before any state
    reads it. Run with `salt-run state.orchestrate orch`. #}
{%- set order = salt['pillar.get']('sqlgate:role_order', []) %}
{%- set steps = salt['pillar.get']('sqlgate:roles', {}) %}
{%- set members = {} %}
{%- for role in order %}
{%-   do members.update({role: []}) %}
{%- endfor %}
{%- for name, host in salt['pillar.get']('sqlgate:hosts', {}) | dictsort %}
{%-   do members[host.role].append(name) %}
{%- endfor %}
{%- set everyone = [] %}
{%- for role in order %}
{%-   do everyone.extend(members[role]) %}
{%- endfor %}

every minion has fresh pillar data:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ everyone | join(',') }}
    - tgt_type: list
    - kwarg:
        wait: True

every minion publishes its private address to the mine:
  salt.function:
    - name: mine.update
    - tgt: {{ everyone | join(',') }}
    - tgt_type: list
    - require:
      - salt: every minion has fresh pillar data
{%- set previous = namespace(step='every minion publishes its private address to the mine') %}
{%- for role in order if members[role] %}

{{ steps[role].step }}:
  salt.state:
    - tgt: {{ members[role] | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: {{ previous.step }}
{%-   set previous.step = steps[role].step %}
{%- endfor %}
