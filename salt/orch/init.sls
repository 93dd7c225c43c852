{#- The whole cluster, one role after the other in the role table's order (cluster/topology.py,
    carried by the pillar's `sqlgate:role_order`): the primary, then the replicas (which read the
    primary's address from the mine), then the Proxy, then the Gatekeeper. Before any of them:
    the formula's custom modules (salt/_modules, salt/_states) reach every minion, then fresh
    pillar data, then the mine. Run with `salt-run state.orchestrate orch`.

    State IDs: sqlgate-orch-sync, sqlgate-orch-pillar, sqlgate-orch-mine, and one
    sqlgate-orch-<role> highstate per role that has minions. #}
{%- set order = salt['pillar.get']('sqlgate:role_order', []) %}
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

sqlgate-orch-sync:
  salt.function:
    - name: saltutil.sync_all
    - tgt: {{ everyone | join(',') }}
    - tgt_type: list
    - kwarg:
        refresh: True

sqlgate-orch-pillar:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ everyone | join(',') }}
    - tgt_type: list
    - kwarg:
        wait: True
    - require:
      - salt: sqlgate-orch-sync

sqlgate-orch-mine:
  salt.function:
    - name: mine.update
    - tgt: {{ everyone | join(',') }}
    - tgt_type: list
    - require:
      - salt: sqlgate-orch-pillar
{%- set previous = namespace(step='sqlgate-orch-mine') %}
{%- for role in order if members[role] %}

sqlgate-orch-{{ role }}:
  salt.state:
    - tgt: {{ members[role] | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: {{ previous.step }}
{%-   set previous.step = 'sqlgate-orch-' ~ role %}
{%- endfor %}
