# Route53 publishes health-check metrics in us-east-1 only, so the alarm and
# the SNS topic it notifies are created there (provider aws.us_east_1).

resource "aws_sns_topic" "alarms" {
  #checkov:skip=CKV_AWS_26:CloudWatch cannot publish to a topic encrypted with the AWS-managed aws/sns key, and the messages (alarm name and state) are not sensitive.
  count    = var.enable_health_check ? 1 : 0
  provider = aws.us_east_1

  name = "${var.name}-alarms"
  tags = local.tags
}

resource "aws_sns_topic_policy" "alarms" {
  count    = var.enable_health_check ? 1 : 0
  provider = aws.us_east_1

  arn = aws_sns_topic.alarms[0].arn
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "CloudWatchAlarms"
      Effect    = "Allow"
      Principal = { Service = "cloudwatch.amazonaws.com" }
      Action    = "sns:Publish"
      Resource  = aws_sns_topic.alarms[0].arn
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
}

resource "aws_sns_topic_subscription" "email" {
  count    = var.enable_health_check && var.alarm_email != null ? 1 : 0
  provider = aws.us_east_1

  topic_arn = aws_sns_topic.alarms[0].arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "healthz" {
  count    = var.enable_health_check ? 1 : 0
  provider = aws.us_east_1

  alarm_name        = "${var.name}-healthz-down"
  alarm_description = "Tally ${local.url}/healthz failed the Route53 health check for 3 minutes. Runbook: docs/deploy-aws.md#when-the-health-check-alarm-fires"
  namespace         = "AWS/Route53"
  metric_name       = "HealthCheckStatus"
  dimensions = {
    HealthCheckId = aws_route53_health_check.app[0].id
  }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  # No data means the checkers cannot report: treat it as down.
  treat_missing_data = "breaching"
  actions_enabled    = true
  alarm_actions      = [aws_sns_topic.alarms[0].arn]
  ok_actions         = [aws_sns_topic.alarms[0].arn]

  tags = local.tags
}
