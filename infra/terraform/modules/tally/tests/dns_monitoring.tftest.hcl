# Route53 record, HTTPS health check on /healthz, alarm and SNS in us-east-1.

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

run "health_check_without_domain" {
  command = plan

  assert {
    condition     = length(aws_route53_record.app) == 0
    error_message = "No DNS record without a zone."
  }

  assert {
    condition = (
      aws_route53_health_check.app[0].type == "HTTPS" &&
      aws_route53_health_check.app[0].port == 443 &&
      aws_route53_health_check.app[0].resource_path == "/healthz" &&
      aws_route53_health_check.app[0].fqdn == null &&
      aws_route53_health_check.app[0].ip_address == "198.51.100.10"
    )
    error_message = "The health check must probe https://<ip>/healthz."
  }

  assert {
    condition = (
      aws_cloudwatch_metric_alarm.healthz[0].namespace == "AWS/Route53" &&
      aws_cloudwatch_metric_alarm.healthz[0].metric_name == "HealthCheckStatus" &&
      aws_cloudwatch_metric_alarm.healthz[0].comparison_operator == "LessThanThreshold" &&
      aws_cloudwatch_metric_alarm.healthz[0].threshold == 1 &&
      aws_cloudwatch_metric_alarm.healthz[0].treat_missing_data == "breaching"
    )
    error_message = "The alarm must fire when the Route53 health check status drops below 1."
  }

  assert {
    condition     = length(aws_sns_topic_subscription.email) == 0
    error_message = "No e-mail subscription without alarm_email."
  }

  assert {
    condition     = output.url == "https://198.51.100.10"
    error_message = "Without a domain the url output must be the Elastic IP."
  }
}

run "domain_record_and_email" {
  command = plan

  variables {
    domain          = "tally.example.com"
    acme_email      = "ops@example.com"
    route53_zone_id = "Z0123456789ABCDEFGHIJ"
    alarm_email     = "ops@example.com"
  }

  assert {
    condition     = aws_route53_record.app[0].name == "tally.example.com" && aws_route53_record.app[0].type == "A" && aws_route53_record.app[0].zone_id == "Z0123456789ABCDEFGHIJ"
    error_message = "An A record for the domain must be created in the given zone."
  }

  assert {
    condition     = aws_route53_record.app[0].records == toset(["198.51.100.10"])
    error_message = "The A record must point at the Elastic IP."
  }

  assert {
    condition     = aws_route53_health_check.app[0].fqdn == "tally.example.com" && aws_route53_health_check.app[0].enable_sni == true
    error_message = "With a domain, the health check must send it as Host and SNI."
  }

  assert {
    condition     = aws_sns_topic_subscription.email[0].protocol == "email" && aws_sns_topic_subscription.email[0].endpoint == "ops@example.com"
    error_message = "alarm_email must be subscribed to the alarm topic."
  }

  assert {
    condition     = output.url == "https://tally.example.com"
    error_message = "The url output must use the domain."
  }
}

run "health_check_can_be_disabled" {
  command = plan

  variables {
    enable_health_check = false
  }

  assert {
    condition     = length(aws_route53_health_check.app) == 0 && length(aws_cloudwatch_metric_alarm.healthz) == 0 && length(aws_sns_topic.alarms) == 0
    error_message = "enable_health_check = false must create no health check, alarm or topic."
  }
}
