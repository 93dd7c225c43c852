{#- The whole cluster in order: the primary, then the replicas (which read the primary's address
    from the mine), then the Proxy, then the Gatekeeper. The mine is refreshed before any state
    reads it. Run with `salt-run state.orchestrate orch`. #}
{%- set roles = {'manager': [], 'worker': [], 'proxy': [], 'gatekeeper': []} %}
{%- for name, host in salt['pillar.get']('sqlgate:hosts', {}) | dictsort %}
{%-   do roles[host.role].append(name) %}
{%- endfor %}
{%- set everyone = roles.manager + roles.worker + roles.proxy + roles.gatekeeper %}

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

the primary is configured:
  salt.state:
    - tgt: {{ roles.manager | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: every minion publishes its private address to the mine

the replicas follow the primary:
  salt.state:
    - tgt: {{ roles.worker | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: the primary is configured

the proxy is serving:
  salt.state:
    - tgt: {{ roles.proxy | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: the replicas follow the primary

the gatekeeper is serving:
  salt.state:
    - tgt: {{ roles.gatekeeper | join(',') }}
    - tgt_type: list
    - highstate: True
    - require:
      - salt: the proxy is serving
