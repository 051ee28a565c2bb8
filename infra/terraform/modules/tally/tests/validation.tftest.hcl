# Bad input is refused at plan time with a clear message. Several bad values
# share a run (each run costs a provider start): every variable listed in
# expect_failures must fail its own validation, or the run fails.

mock_provider "aws" {
  source = "./tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "./tests/mocks"
}

variables {
  repo_url = "https://github.com/example/tally.git"
  repo_ref = "v1.0.0"
}

run "refuses_ssh_from_anywhere_and_unsafe_sources" {
  command = plan

  variables {
    ssh_allowed_cidrs        = ["203.0.113.7/32", "0.0.0.0/0"]
    repo_url                 = "http://github.com/example/tally.git"
    repo_ref                 = "--upload-pack=evil"
    instance_type            = "t3.micro"
    allowed_egress_tcp_ports = [80]
    route53_zone_id          = "Z0123456789ABCDEFGHIJ"
    app_hosts                = 2
  }

  expect_failures = [
    var.ssh_allowed_cidrs,
    var.repo_url,
    var.repo_ref,
    var.instance_type,
    var.allowed_egress_tcp_ports,
    var.route53_zone_id,
    var.app_hosts,
  ]
}

run "refuses_ipv6_anywhere_and_secrets_in_env" {
  command = plan

  variables {
    ssh_allowed_cidrs = ["::/0"]
    repo_url          = "https://user:token@github.com/example/tally.git"
    extra_env         = { POSTGRES_PASSWORD = "hunter2hunter2" }
    user_name         = "O'Brien'\nSECRET_KEY=x"
    name              = "Tally_Prod"
  }

  expect_failures = [
    var.ssh_allowed_cidrs,
    var.repo_url,
    var.extra_env,
    var.user_name,
    var.name,
  ]
}

run "refuses_malformed_values" {
  command = plan

  variables {
    ssh_allowed_cidrs         = ["my-laptop"]
    domain                    = "tally.example.com"
    backup_age_recipient      = "AGE-SECRET-KEY-1QQQQ"
    backup_ia_transition_days = 10
    extra_env                 = { DOMAIN = "evil.example.com" }
    tally_image               = "registry.example.com/tally:1.3.0"
  }

  # acme_email fails because a domain without a contact address is refused.
  expect_failures = [
    var.ssh_allowed_cidrs,
    var.acme_email,
    var.backup_age_recipient,
    var.backup_ia_transition_days,
    var.extra_env,
    var.tally_image,
  ]
}

run "refuses_an_app_image_without_its_backup_image" {
  command = plan

  variables {
    tally_image = "registry.example.com/tally:1.3.0-build.57@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  }

  expect_failures = [
    var.tally_backup_image,
  ]
}
