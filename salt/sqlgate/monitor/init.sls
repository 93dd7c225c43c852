# The monitor host: Prometheus, scraping every host of the cluster and evaluating the alert
# rules, its UI, API and consoles over HTTPS; and the Gatekeepers' shared rate store (Redis).
include:
  - .package
  - .tls
  - .config
  - .service
  - .ratestore
