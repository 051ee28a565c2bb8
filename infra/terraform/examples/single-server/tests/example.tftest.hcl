# The example root wires the module with both providers and plans with the
# values of terraform.tfvars.example.

mock_provider "aws" {
  source = "../../modules/tally/tests/mocks"
}

mock_provider "aws" {
  alias  = "us_east_1"
  source = "../../modules/tally/tests/mocks"
}

variables {
  repo_url        = "https://github.com/your-org/tally.git"
  repo_ref        = "v1.0.0"
  domain          = "tally.example.com"
  acme_email      = "ops@example.com"
  route53_zone_id = "Z0123456789ABCDEFGHIJ"
  alarm_email     = "ops@example.com"
}

run "plans_with_the_example_values" {
  command = plan

  assert {
    condition     = output.url == "https://tally.example.com"
    error_message = "The url output must be the domain over HTTPS."
  }

  assert {
    condition     = output.backup_bucket == "tally-backups-123456789012-eu-west-1"
    error_message = "The backup bucket must be named after the account and region."
  }

  assert {
    condition     = output.ssm_session_command == "aws ssm start-session --region eu-west-1 --target i-0123456789abcdef0" && output.ssh_command == null
    error_message = "Default access is SSM, not SSH."
  }
}

run "refuses_bad_region" {
  command = plan

  variables {
    region = "Europe"
  }

  expect_failures = [var.region]
}
