terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # State is local by default. For a team, or simply to not lose it, keep it
  # in S3: copy backend.tf.example to backend.tf (docs/deploy-aws.md).
}
