package channelsapi

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/gin-gonic/gin/binding"
	"github.com/go-playground/validator/v10"
)

// validate runs Gin's validator (the `binding` struct tags) on obj, a pointer
// to a model, and returns a 400 *Error with Django REST Framework style
// messages keyed by JSON field name, or nil.
func (m *model) validate(obj any) error {
	err := binding.Validator.ValidateStruct(obj)
	if err == nil {
		return nil
	}
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return err
	}
	fields := map[string][]string{}
	for _, fe := range verrs {
		key := fe.Field()
		if f, ok := m.byGo[fe.StructField()]; ok {
			key = f.json
		}
		fields[key] = append(fields[key], validationMessage(fe))
	}
	return &Error{Fields: fields}
}

// validationMessage turns one failed binding rule into a human message.
func validationMessage(fe validator.FieldError) string {
	kind := fe.Kind()
	isString := kind == reflect.String
	isList := kind == reflect.Slice || kind == reflect.Array || kind == reflect.Map
	p := fe.Param()
	switch fe.Tag() {
	case "required", "required_if", "required_unless", "required_with", "required_without":
		return "This field is required."
	case "max", "lte":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has no more than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has no more than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is less than or equal to %s.", p)
	case "min", "gte":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has at least %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has at least %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is greater than or equal to %s.", p)
	case "lt":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has fewer than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has fewer than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is less than %s.", p)
	case "gt":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has more than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has more than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is greater than %s.", p)
	case "len":
		if isString {
			return fmt.Sprintf("Ensure this field has exactly %s characters.", p)
		}
		if isList {
			return fmt.Sprintf("Ensure this field has exactly %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is equal to %s.", p)
	case "eq":
		return fmt.Sprintf("Ensure this value is equal to %s.", p)
	case "ne":
		return fmt.Sprintf("Ensure this value is not equal to %s.", p)
	case "oneof":
		return fmt.Sprintf("%q is not a valid choice.", fmt.Sprint(fe.Value()))
	case "email":
		return "Enter a valid email address."
	case "url", "http_url", "uri":
		return "Enter a valid URL."
	case "uuid", "uuid4", "uuid3", "uuid5":
		return "Must be a valid UUID."
	case "ip", "ipv4", "ipv6":
		return "Enter a valid IP address."
	case "alpha":
		return "Enter only letters."
	case "alphanum":
		return "Enter only letters and numbers."
	case "numeric", "number":
		return "Enter a number."
	case "boolean":
		return "Must be a valid boolean."
	case "datetime":
		return fmt.Sprintf("Datetime has wrong format. Use this format: %s.", p)
	case "contains":
		return fmt.Sprintf("Must contain %q.", p)
	case "excludes":
		return fmt.Sprintf("Must not contain %q.", p)
	case "startswith":
		return fmt.Sprintf("Must start with %q.", p)
	case "endswith":
		return fmt.Sprintf("Must end with %q.", p)
	case "lowercase":
		return "Must be lower case."
	case "uppercase":
		return "Must be upper case."
	}
	if p != "" {
		return fmt.Sprintf("Invalid value (rule %q with %q).", fe.Tag(), p)
	}
	return fmt.Sprintf("Invalid value (rule %q).", fe.Tag())
}
