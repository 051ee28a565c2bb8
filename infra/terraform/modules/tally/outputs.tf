output "url" {
  description = "Public URL of the site (the domain when set, otherwise the Elastic IP with a self-signed certificate)."
  value       = local.url
}

output "public_ip" {
  description = "Elastic IP of the server; point the domain's A record here when Route53 is not managed by this module."
  value       = aws_eip.this.public_ip
}

output "instance_id" {
  description = "EC2 instance id (for SSM sessions and console logs)."
  value       = aws_instance.this.id
}

output "data_volume_id" {
  description = "EBS volume holding Docker's data root (PostgreSQL, Prometheus, Grafana, local backups, certificates)."
  value       = aws_ebs_volume.data.id
}

output "backup_bucket" {
  description = "S3 bucket receiving the offsite backups (BACKUP_S3_BUCKET)."
  value       = aws_s3_bucket.backups.bucket
}

output "backup_bucket_arn" {
  description = "ARN of the backup bucket."
  value       = aws_s3_bucket.backups.arn
}

output "security_group_id" {
  description = "Security group of the server."
  value       = aws_security_group.instance.id
}

output "instance_role_name" {
  description = "IAM role of the instance (attach extra policies here if the stack needs more AWS access)."
  value       = aws_iam_role.instance.name
}

output "ssm_parameter_prefix" {
  description = "SSM Parameter Store path holding the stack's secrets."
  value       = local.ssm_parameter_prefix
}

output "ssm_session_command" {
  description = "Shell on the server through SSM Session Manager (needs the session-manager-plugin locally)."
  value       = var.enable_ssm ? "aws ssm start-session --region ${local.region} --target ${aws_instance.this.id}" : null
}

output "ssh_command" {
  description = "SSH command when a key pair and an allowed CIDR are configured."
  value       = var.ssh_key_name != null && length(var.ssh_allowed_cidrs) > 0 ? "ssh admin@${aws_eip.this.public_ip}" : null
}

output "health_check_id" {
  description = "Route53 health check id, when enabled."
  value       = var.enable_health_check ? aws_route53_health_check.app[0].id : null
}

output "alarm_topic_arn" {
  description = "SNS topic (us-east-1) notified when the health check fails; subscribe more endpoints to it."
  value       = var.enable_health_check ? aws_sns_topic.alarms[0].arn : null
}

output "user_data" {
  description = "Rendered cloud-init configuration (contains no secret)."
  value       = local.user_data
}

output "database_endpoint" {
  description = "RDS endpoint (host:port) when database = \"rds\" (TALLY_DATABASE_HOST is its host part)."
  value       = local.rds ? aws_db_instance.this[0].endpoint : null
}

output "database_master_secret_arn" {
  description = "Secrets Manager secret holding the RDS master user (tally) and its password, when database = \"rds\"."
  value       = local.rds ? try(aws_db_instance.this[0].master_user_secret[0].secret_arn, null) : null
}

output "worker_instance_ids" {
  description = "EC2 instance ids of the swarm workers (app_hosts - 1 of them)."
  value       = aws_instance.worker[*].id
}

output "worker_user_data" {
  description = "Rendered cloud-init of the swarm workers (contains no secret); null without workers."
  value       = local.workers > 0 ? local.worker_user_data : null
}
