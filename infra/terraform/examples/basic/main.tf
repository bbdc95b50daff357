# An example root: the qsync bucket, distribution, policies and alarm for
# one set of chains, with the publisher role the agent runs as.
#   terraform init && terraform apply -var name=acme-eth

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

variable "name" {
  description = "Name prefix, e.g. acme-eth."
  type        = string
}

variable "region" {
  description = "Region of the bucket."
  type        = string
  default     = "eu-central-1"
}

variable "alarm_email" {
  description = "Address subscribed to the download alarm (null for none)."
  type        = string
  default     = null
}

provider "aws" {
  region = var.region
}

# CloudFront's metrics (and so its alarms) live in us-east-1.
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
}

resource "aws_sns_topic" "alarms" {
  provider          = aws.us_east_1
  name              = "${var.name}-qsync-alarms"
  kms_master_key_id = "alias/aws/sns"
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == null ? 0 : 1
  provider  = aws.us_east_1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

module "qsync" {
  source = "../../modules/qsync"
  providers = {
    aws           = aws
    aws.us_east_1 = aws.us_east_1
  }
  name                 = var.name
  prefix               = "qsync"
  download_alarm_bytes = 1000000000000 # 1 TB a day
  alarm_actions        = [aws_sns_topic.alarms.arn]
  tags                 = { project = "qsync", chain = var.name }
}

# The role the agent runs as (here for an EKS service account via IRSA; use
# an instance profile or another trust policy as your nodes need).
variable "oidc_provider_arn" {
  description = "EKS OIDC provider ARN for IRSA; null skips the role."
  type        = string
  default     = null
}

data "aws_iam_policy_document" "agent_trust" {
  count = var.oidc_provider_arn == null ? 0 : 1
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
  }
}

resource "aws_iam_role" "agent" {
  count              = var.oidc_provider_arn == null ? 0 : 1
  name               = "${var.name}-qsync-agent"
  assume_role_policy = data.aws_iam_policy_document.agent_trust[0].json
}

resource "aws_iam_role_policy_attachment" "agent" {
  count      = var.oidc_provider_arn == null ? 0 : 1
  role       = aws_iam_role.agent[0].name
  policy_arn = module.qsync.publisher_policy_arn
}

output "store_url" {
  description = "The agent's stores entry."
  value       = module.qsync.store_url
}

output "cloudfront_url" {
  description = "QSYNC_FROM for fetchers."
  value       = module.qsync.cloudfront_url
}

output "cloudfront_distribution_id" {
  description = "The agent's cloudfront-distribution-id."
  value       = module.qsync.cloudfront_distribution_id
}

output "agent_role_arn" {
  description = "Annotate the agent's service account with this (eks.amazonaws.com/role-arn)."
  value       = var.oidc_provider_arn == null ? null : aws_iam_role.agent[0].arn
}
