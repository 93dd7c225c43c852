{#- The rolling restart of the service hosts, one host at a time, with no request failing
    (`bootstrap.py restart --rolling` runs `salt-run state.orchestrate orch.rolling`):

    1. the formula's modules reach the service hosts (sqlgate_service, sqlgate_balancer);
    2. each Proxy in turn: restarted (sqlgate_service.restart: SIGTERM, so it drains: it opens
       no new transaction, the Gatekeepers open them on another Proxy, and its open ones
       finish within their idle timeout; then it starts and answers again);
    3. each Gatekeeper in turn: the balancer stops sending it new connections and stops
       checking it (sqlgate_balancer.drain), it is restarted (it drains too: every answer
       closes its connection, and it finishes what is in flight), then the balancer checks it
       again and sends it connections once it is up (sqlgate_balancer.ready).
    A step that fails stops the run there: the hosts after it are not touched. Without a
    balancer host (AWS: the NLB) step 3 relies on the Gatekeeper's own drain (its health
    check fails at once and it serves on for GATEKEEPER_DRAIN_SECONDS).

    State IDs: sqlgate-rolling-sync, sqlgate-rolling-<host> (the restart) and, with a
    balancer, sqlgate-rolling-<host>-drain and sqlgate-rolling-<host>-ready. #}
{%- set hosts = salt['pillar.get']('sqlgate:hosts', {}) %}
{%- set members = {'proxy': [], 'gatekeeper': [], 'balancer': []} %}
{%- for name, host in hosts | dictsort %}
{%-   if host.role in members %}
{%-     do members[host.role].append(name) %}
{%-   endif %}
{%- endfor %}
{%- set balancer = members.balancer | first | default('') %}
{%- set services = {'proxy': ('sqlgate-proxy', 'sqlgate.proxy.service'),
                    'gatekeeper': ('sqlgate-gatekeeper', 'sqlgate.gatekeeper.service')} %}
{%- set timeout = salt['pillar.get']('sqlgate:rolling:step_timeout', 300) %}

sqlgate-rolling-sync:
  salt.function:
    - name: saltutil.sync_modules
    - tgt: {{ (members.proxy + members.gatekeeper + members.balancer) | join(',') }}
    - tgt_type: list
    - kwarg:
        refresh: True
{%- set previous = namespace(step='sqlgate-rolling-sync') %}
{%- for role in ('proxy', 'gatekeeper') %}
{%-   for host in members[role] %}
{%-     set drained = role == 'gatekeeper' and balancer %}
{%-     if drained %}

sqlgate-rolling-{{ host }}-drain:
  salt.function:
    - name: sqlgate_balancer.drain
    - tgt: {{ balancer }}
    - arg: [{{ host }}]
    - require:
      - salt: {{ previous.step }}
{%-       set previous.step = 'sqlgate-rolling-' ~ host ~ '-drain' %}
{%-     endif %}

sqlgate-rolling-{{ host }}:
  salt.function:
    - name: sqlgate_service.restart
    - tgt: {{ host }}
    - arg: [{{ services[role][0] }}, {{ services[role][1] }}]
    - timeout: {{ timeout }}
    - require:
      - salt: {{ previous.step }}
{%-     set previous.step = 'sqlgate-rolling-' ~ host %}
{%-     if drained %}

sqlgate-rolling-{{ host }}-ready:
  salt.function:
    - name: sqlgate_balancer.ready
    - tgt: {{ balancer }}
    - arg: [{{ host }}]
    - require:
      - salt: {{ previous.step }}
{%-       set previous.step = 'sqlgate-rolling-' ~ host ~ '-ready' %}
{%-     endif %}
{%-   endfor %}
{%- endfor %}
