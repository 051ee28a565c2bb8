output "url" {
  description = "Public URL of the site."
  value       = module.tally.url
}

output "public_ip" {
  description = "Elastic IP of the server."
  value       = module.tally.public_ip
}

output "instance_id" {
  description = "EC2 instance id."
  value       = module.tally.instance_id
}

output "data_volume_id" {
  description = "Data volume id (keep it when destroying, see docs/deploy-aws.md)."
  value       = module.tally.data_volume_id
}

output "backup_bucket" {
  description = "Offsite backup bucket."
  value       = module.tally.backup_bucket
}

output "ssm_parameter_prefix" {
  description = "SSM path of the stack's secrets."
  value       = module.tally.ssm_parameter_prefix
}

output "ssm_session_command" {
  description = "Open a shell on the server."
  value       = module.tally.ssm_session_command
}

output "ssh_command" {
  description = "SSH command, when SSH is enabled."
  value       = module.tally.ssh_command
}

output "alarm_topic_arn" {
  description = "SNS topic of the health-check alarm."
  value       = module.tally.alarm_topic_arn
}
