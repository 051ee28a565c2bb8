terraform {
  # 1.9 is the first release whose variable validations may refer to other
  # variables (used for the SSH-from-anywhere guard).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100.0, < 6.0.0"
      # Route53 health-check metrics exist only in us-east-1, so the alarm and
      # its SNS topic must live there whatever region the server runs in.
      configuration_aliases = [aws.us_east_1]
    }
  }
}
